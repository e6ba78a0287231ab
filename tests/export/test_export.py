import copy
import json
import re

import numpy as np
import onnx
import pytest
import torch

from svdtrt.bundle.store import Bundle
from svdtrt.errors import AccuracyError, ExportError, InputError
from svdtrt.export.bundle_export import export_bundle
from svdtrt.export.validation import validate_graph
from svdtrt.graphs.sessions import open_session
from svdtrt.models.modules import example_inputs, torch_modules
from svdtrt.specs import COMPONENTS


def test_bundle_holds_validated_graphs_with_one_data_file_each(tiny_bundle):
    """The four components and the two block-caching graphs; each graph reads one weights file, its
    own or (the caching graphs, docs/architecture.md "Block caching") the UNet's."""
    m = tiny_bundle.manifest
    assert list(m.components) == ["image_encoder", "vae_encoder", "unet", "vae_decoder", "unet_full", "unet_shallow"]
    for name, entry in m.components.items():
        graph = onnx.load(str(tiny_bundle.graph_path(name)), load_external_data=False)
        locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {entry.graphs["fp32"].data} and len(locations) == 1
        assert entry.graphs["fp32"].data == ("unet.fp32.onnx.data" if name.startswith("unet_") else f"{name}.fp32.onnx.data")
        assert [i.name for i in graph.graph.input] == COMPONENTS[name].input_names
        assert [o.name for o in graph.graph.output] == COMPONENTS[name].output_names
        for metrics in entry.graphs["fp32"].validation.outputs.values():
            assert metrics["rel_error"] < 1e-4 and metrics["cosine"] > 0.99999
    assert m.exporter == {"name": "torch.onnx.export", "dynamo": False, "opset": 17}
    assert m.source.model_dump() == {"kind": "preset", "name": "tiny", "seed": 0}
    assert (tiny_bundle.path / "scheduler" / "scheduler_config.json").is_file()
    assert (tiny_bundle.path / "feature_extractor" / "preprocessor_config.json").is_file()


def _run_against_torch(bundle, model, name, sizes):
    spec = COMPONENTS[name]
    inputs = example_inputs(spec, sizes, seed=3)
    got = open_session(bundle.graph_path(name), "validate").run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        expected = torch_modules(model)[name](*inputs.values()).numpy()
    return got, expected


@pytest.mark.parametrize("name,batch,frames,height,width", [
    ("unet", 1, 3, 32, 96),        # other batch, frames and aspect than the export shape
    ("vae_decoder", 1, 2, 48, 32),  # a decode chunk of 2 frames
    ("vae_encoder", 1, 1, 96, 32),
    ("image_encoder", 2, 1, 64, 64),
])
def test_graphs_stay_dynamic_and_match_torch_at_other_shapes(tiny_bundle, tiny_model, name, batch, frames, height, width):
    sizes = tiny_model.dims.sizes(batch, frames, height, width)
    got, expected = _run_against_torch(tiny_bundle, tiny_model, name, sizes)
    assert got.shape == expected.shape == COMPONENTS[name].outputs[0].shape(sizes)
    assert np.abs(got - expected).max() < 1e-4


def test_validation_names_component_output_and_error(tiny_bundle, tiny_model):
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.unet.conv_out.bias += 0.5
    spec = COMPONENTS["unet"]
    inputs = example_inputs(spec, tiny_model.dims.sizes(2, 4, 64, 64))
    with pytest.raises(AccuracyError, match=r"unet: output 'noise_pred' misses its tolerance") as e:
        validate_graph(tiny_bundle.graph_path("unet"), spec, torch_modules(broken)["unet"], inputs)
    assert e.value.component == "unet" and e.value.output == "noise_pred" and e.value.value > 1e-4


def test_failed_export_leaves_no_bundle_and_keeps_an_existing_one(tiny_model, tmp_path, monkeypatch):
    import svdtrt.export.bundle_export as export

    def fail(module, spec, *args, **kwargs):
        raise ExportError(f"{spec.name}: simulated failure")

    monkeypatch.setattr(export, "export_graph", fail)
    with pytest.raises(ExportError):
        export_bundle(tiny_model, tmp_path / "new", progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing: the lock file is in the user's cache folder

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "manifest.json").write_text("{}")
    with pytest.raises(ExportError):
        export_bundle(tiny_model, existing, force=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert (existing / "manifest.json").read_text() == "{}"


def test_existing_output_needs_force_and_force_replaces_only_a_bundle(tiny_model, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")  # a (damaged) bundle: --force may replace it
    with pytest.raises(InputError, match="already exists"):
        export_bundle(tiny_model, tmp_path / "b", progress=False)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"a photo")
    (tmp_path / "cat.png").write_bytes(b"a photo")
    for taken, what in (("photos", "a folder that is not a bundle (no manifest.json)"), ("cat.png", "a file")):
        with pytest.raises(InputError, match=re.escape(f"is {what}; svdtrt replaces only a bundle it made, even with "
                                                       "--force")):
            export_bundle(tiny_model, tmp_path / taken, force=True, progress=False)
    assert (tmp_path / "photos" / "cat.png").read_bytes() == (tmp_path / "cat.png").read_bytes() == b"a photo"


def test_impossible_shape_is_refused_before_export(tiny_model, tmp_path):
    with pytest.raises(InputError, match="multiples of 8 pixels"):
        export_bundle(tiny_model, tmp_path / "b", height=(60, 60, 60), progress=False)
    assert not (tmp_path / "b").exists()


def test_bundle_open_refuses_other_versions_and_missing_graphs(tiny_bundle, tmp_path):
    import shutil

    from svdtrt.errors import BundleError

    copy_dir = tmp_path / "copy"
    shutil.copytree(tiny_bundle.path, copy_dir)
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    (copy_dir / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="format version 99"):
        Bundle.open(copy_dir)
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    (copy_dir / "unet.fp32.onnx.data").unlink()
    with pytest.raises(BundleError, match="unet.fp32.onnx.data is missing"):
        Bundle.open(copy_dir)


@pytest.mark.slow
def test_release_weights_frees_each_module_before_its_graphs_are_validated(tmp_path, monkeypatch):
    """PyTorch's weights and ONNX Runtime's copy are never in memory together (docs/export.md,
    "Memory"): each module is on the meta device when ONNX Runtime first loads a graph it served."""
    from svdtrt.export import bundle_export
    from svdtrt.models.loading import build_preset

    model = build_preset("tiny")
    owners = {"image_encoder": model.image_encoder, "vae_encoder": model.vae, "vae_decoder": model.vae,
              "unet": model.unet, "unet_full": model.unet, "unet_shallow": model.unet}
    devices = {}

    def validate(path, spec, *args, **kwargs):  # the real validation, after noting the owner's device
        devices[spec.name] = {p.device.type for p in owners[spec.name].parameters()}
        return validate_graph(path, spec, *args, **kwargs)

    monkeypatch.setattr(bundle_export, "validate_graph", validate)
    bundle = export_bundle(model, tmp_path / "b", progress=False, release_weights=True)
    assert devices == {name: {"meta"} for name in COMPONENTS}
    assert set(bundle.manifest.components) == set(COMPONENTS)
    # validated against the reference outputs computed before the release
    assert bundle.manifest.components["vae_decoder"].graphs["fp32"].validation.outputs["frames"]["cosine"] > 0.99999
    assert bundle.manifest.components["unet_shallow"].graphs["fp32"].validation.outputs["noise_pred"]["cosine"] > 0.99999
