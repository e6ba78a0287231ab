"""Export at scale, on the tiny preset: external data, fp16 graphs, shape ranges, the
deployability check, component subsets and bad input. The svd/svd-xt numbers themselves come
from benchmarks/export_scale.py (docs/export.md), not from tests."""

from __future__ import annotations

import errno
import json
import shutil

import onnx
import pytest
import torch
from onnx import TensorProto

from svdtrt.bundle.store import Bundle
from svdtrt.errors import AccuracyError, BundleError, ExportError, InputError
from svdtrt.export.bundle_export import export_bundle
from svdtrt.export.validation import validate_graph
from svdtrt.graphs.deployability import deployability_problems
from svdtrt.graphs.files import ALIGNMENT, EMBED_BELOW_BYTES
from svdtrt.models.loading import ModelDims
from svdtrt.models.modules import example_inputs, torch_modules
from svdtrt.models.presets import PRESETS
from svdtrt.specs import COMPONENTS, validation_shape


@pytest.fixture(scope="module")
def fp16_bundle(tiny_model, tmp_path_factory):
    """tiny's UNet and VAE decoder in fp32 and fp16, frames 2:4:6 (read-only)."""
    return export_bundle(tiny_model, tmp_path_factory.mktemp("scale") / "b", frames=(2, 4, 6),
                         components=["unet", "vae_decoder"], precisions=("fp32", "fp16"), progress=False)


def _snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_each_graph_has_one_aligned_external_data_file(fp16_bundle):
    for name, entry in fp16_bundle.manifest.components.items():
        for precision, g in entry.graphs.items():
            path = fp16_bundle.path / g.file
            model = onnx.load(str(path), load_external_data=False)
            external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
            assert external, name
            locations = {dict((e.key, e.value) for e in t.external_data)["location"] for t in external}
            assert locations == {g.data}
            for t in external:
                info = {e.key: int(e.value) for e in t.external_data if e.key != "location"}
                assert info["offset"] % ALIGNMENT == 0 and info["length"] >= EMBED_BELOW_BYTES
            embedded = [t for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL]
            assert all(len(t.raw_data) < EMBED_BELOW_BYTES for t in embedded)
            onnx.checker.check_model(str(path))  # by path, external data included


def test_fp16_graphs_are_half_size_validated_and_keep_float32_io(fp16_bundle):
    for name, entry in fp16_bundle.manifest.components.items():
        fp32, fp16 = entry.graphs["fp32"], entry.graphs["fp16"]
        assert fp16.conversion["io_dtype"] == "float32"
        data32 = (fp16_bundle.path / fp32.data).stat().st_size
        data16 = (fp16_bundle.path / fp16.data).stat().st_size
        assert data16 < 0.6 * data32, name
        tol = fp16.validation.tolerances
        for m in fp16.validation.outputs.values():
            assert m["cosine"] >= tol["min_cosine"] and m["psnr_db"] >= tol["min_psnr_db"]
            assert m["psnr_db"] < fp32.validation.outputs[next(iter(fp32.validation.outputs))]["psnr_db"]
        graph = onnx.load(str(fp16_bundle.path / fp16.file), load_external_data=False).graph
        assert {i.type.tensor_type.elem_type for i in (*graph.input, *graph.output)} == {TensorProto.FLOAT}
        assert any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)
    # the time embeddings stay float32 (Sin/Cos), the rest of the UNet is fp16
    assert {"Sin", "Cos"} <= set(fp16_bundle.manifest.components["unet"].graphs["fp16"].conversion["fp32_ops"])


def test_runtime_runs_fp16_graphs_close_to_pytorch(fp16_bundle, tiny_model):
    from svdtrt.runtime.backends.onnxrt import OnnxRuntimeBackend

    spec = COMPONENTS["vae_decoder"]
    inputs = example_inputs(spec, tiny_model.dims.sizes(1, 3, 64, 64), seed=3)  # 3 frames: not the traced 4
    got = OnnxRuntimeBackend(fp16_bundle, precision="fp16").component("vae_decoder")(inputs)["frames"]
    with torch.no_grad():
        ref = torch_modules(tiny_model)["vae_decoder"](inputs["latents"])
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert 1e-5 < (got - ref).abs().max() < 0.05  # fp16 rounding is there, and small


def test_fp16_validation_failing_its_tolerance_is_an_error(fp16_bundle, tiny_model):
    spec = COMPONENTS["unet"]
    inputs = example_inputs(spec, tiny_model.dims.sizes(2, 4, 64, 64))
    path = fp16_bundle.graph_path("unet", "fp16")
    module = torch_modules(tiny_model)["unet"]
    with pytest.raises(AccuracyError, match="unet: output 'noise_pred'.*PSNR"):
        validate_graph(path, spec, module, inputs, max_rel_error=float("inf"), min_cosine=0.9, min_psnr_db=150.0)
    with pytest.raises(AccuracyError, match="relative max abs error"):
        validate_graph(path, spec, module, inputs)  # fp32 tolerances refuse an fp16 graph


def test_shape_ranges_are_recorded_per_input(fp16_bundle):
    m = fp16_bundle.manifest
    assert m.shapes.frames.model_dump() == {"min": 2, "opt": 4, "max": 6}
    profile = m.components["unet"].profile["sample"]
    assert profile.model_dump() == {"min": [1, 2, 8, 16, 16], "opt": [2, 4, 8, 16, 16], "max": [2, 6, 8, 16, 16]}
    assert m.components["vae_decoder"].profile["latents"].min[0] == 1  # one-frame decode chunk
    unet = m.components["unet"]
    assert unet.fixed_axes == []
    assert [isinstance(d, str) for d in unet.graph_axes["sample"]] == [True, True, False, True, True]


def test_fixed_axes_are_reported():
    from svdtrt.export.bundle_export import _fixed_axes

    axes = {"latents": ["N", 4, 8, "w"], "frames": ["N", 3, "H", "W"]}
    assert _fixed_axes(COMPONENTS["vae_decoder"], axes) == ["latents[2]=8 (h)"]


@pytest.mark.parametrize("frames,height,message", [
    ((6, 4, 2), None, "MIN <= OPT <= MAX"),
    (None, (64, 68, 128), "multiples of 8"),
    ((0, 4, 4), None, "at least 1"),
])
def test_impossible_ranges_are_refused(tiny_model, tmp_path, frames, height, message):
    with pytest.raises(InputError, match=message):
        export_bundle(tiny_model, tmp_path / "b", frames=frames, height=height, progress=False)
    assert not (tmp_path / "b").exists()


def test_exported_graphs_pass_the_deployability_check(fp16_bundle):
    for entry in fp16_bundle.manifest.components.values():
        for g in entry.graphs.values():
            assert deployability_problems(fp16_bundle.path / g.file) == []


def test_components_are_added_to_an_existing_bundle_without_touching_the_rest(fp16_bundle, tiny_model, tmp_path,
                                                                               run_cli):
    out = tmp_path / "b"
    shutil.copytree(fp16_bundle.path, out)
    before = _snapshot(out)
    code, stdout, err = run_cli("export", "tiny", "--out", out, "--components", "vae_encoder", "--frames", "2:4:6")
    assert code == 0, err
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k in before and k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    assert {"vae_encoder.fp32.onnx", "vae_encoder.fp32.onnx.data"} <= set(after)
    bundle = Bundle.open(out)
    assert list(bundle.manifest.components)[:3] == ["vae_encoder", "unet", "vae_decoder"]
    assert "fp16" in bundle.manifest.components["unet"].graphs
    # another range than the bundle's is refused, nothing changes
    code, _, err = run_cli("export", "tiny", "--out", out, "--components", "vae_encoder", "--frames", "4")
    assert code == 2 and "same range" in err and _snapshot(out) == after


def test_a_failing_component_leaves_the_bundle_as_it_was(fp16_bundle, tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "b"
    shutil.copytree(fp16_bundle.path, out)
    before = _snapshot(out)
    import svdtrt.graphs.files as external_data

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(external_data.onnx, "save_model", disk_full)
    with pytest.raises(ExportError, match="disk filled up"):
        export_bundle(tiny_model, out, frames=(2, 4, 6), components=["vae_decoder"], progress=False)
    assert _snapshot(out) == before
    # no temporary directory left behind (nor a lock file: those are in the user's cache folder)
    assert not [p for p in tmp_path.iterdir() if p.name != "b"]


def test_a_bundle_of_another_model_is_refused(fp16_bundle, tmp_path):
    from svdtrt.models.loading import load_model

    out = tmp_path / "b"
    shutil.copytree(fp16_bundle.path, out)
    with pytest.raises(BundleError, match="another model"):
        export_bundle(load_model("small"), out, components=["vae_decoder"], progress=False)


def test_bad_models_are_one_line_errors(tmp_path, run_cli):
    code, _, err = run_cli("export", "sdxl", "--out", tmp_path / "b")
    assert code == 2 and "unknown model 'sdxl'" in err and err.count("\n") == 1
    model = tmp_path / "model"
    for sub in ("unet", "vae", "image_encoder", "scheduler"):
        (model / sub).mkdir(parents=True)
    code, _, err = run_cli("export", model, "--out", tmp_path / "b")
    assert code == 2 and "missing feature_extractor" in err
    (model / "feature_extractor").mkdir()
    (model / "image_encoder" / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"]}))
    code, _, err = run_cli("export", model, "--out", tmp_path / "b")
    assert code == 2 and "image_encoder is a CLIPTextModel, not a CLIPVisionModelWithProjection" in err
    code, _, err = run_cli("export", model, "--random-weights", "--out", tmp_path / "b")
    assert code == 2 and "--random-weights applies to the presets" in err
    code, _, err = run_cli("export", "tiny", "--components", "unet,text_encoder", "--out", tmp_path / "b")
    assert code == 2 and "text_encoder" in err and err.count("\n") == 1
    code, _, err = run_cli("export", "tiny", "--height", "70", "--out", tmp_path / "b")
    assert code == 2 and "multiples of 8" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("name,frames", [("svd", 14), ("svd-xt", 25)])
def test_released_presets_have_the_released_dimensions(name, frames):
    p = PRESETS[name]
    dims = ModelDims.from_configs(p["unet"], p["vae"], p["image_encoder"])
    assert (dims.latent_channels, dims.embed_dim, dims.latent_scale, dims.default_frames) == (4, 1024, 8, frames)
    assert dims.pixel_multiple == 64 and (p["height"], p["width"]) == (576, 1024)
    # validated at 2 frames of 64x64: ONNX Runtime's CPU attention at 576x1024 would need ~85 GB
    assert validation_shape(dims, (frames,) * 3, (576,) * 3, (1024,) * 3) == (2, 64, 64)
