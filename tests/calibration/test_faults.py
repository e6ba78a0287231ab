"""Bad input and faults: each a one-line error with exit code 2, and the bundle left as it was."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from svdtrt.bundle.store import Bundle
from svdtrt.calibration.shards import check_sample
from svdtrt.errors import QuantizationError
from svdtrt.specs import UNET, VAE_DECODER

from ..helpers import rerecord
from .conftest import copy_bundle, snapshot


def _fails_cleanly(run_cli, bundle_path, *args, match: str):
    before = snapshot(bundle_path)
    code, out, err = run_cli(*args)
    assert code == 2, (out, err)
    # the error is one line (progress bars, if any, come before it on stderr)
    assert err.endswith("\n") and err.rsplit("\r", 1)[-1].splitlines()[-1].startswith("svdtrt: error: ")
    assert "Traceback" not in err and err.splitlines()[-1].count("svdtrt: error") == 1
    assert match in err, err
    assert snapshot(bundle_path) == before
    return err


def _unet_sample(dims, **changes):
    sample = {"sample": np.zeros((2, 4, 8, 16, 16), np.float32), "timestep": np.zeros(2, np.float32),
              "encoder_hidden_states": np.zeros((2, 1, 32), np.float32),
              "added_time_ids": np.zeros((2, 3), np.float32)}
    sample.update(changes)
    return {k: v for k, v in sample.items() if v is not None}


@pytest.mark.parametrize("changes, message", [
    ({"sample": None}, "do not match the inputs"),
    ({"noise": np.zeros(2, np.float32)}, "do not match the inputs"),
    ({"timestep": np.zeros(2, np.float64)}, "'timestep' is float64"),
    ({"sample": np.zeros((2, 4, 4, 16, 16), np.float32)}, "'sample' has shape [2, 4, 4, 16, 16]"),  # 2C = 8
    ({"encoder_hidden_states": np.zeros((2, 1, 16), np.float32)}, "'encoder_hidden_states'"),  # D = 32
    ({"timestep": np.zeros(1, np.float32)}, "'timestep' has shape [1]"),  # B differs between inputs
    ({"sample": np.zeros((2, 4, 8, 16), np.float32)}, "'sample' has shape"),
])
def test_mismatched_tensors_are_named(tiny_bundle, changes, message):
    with pytest.raises(QuantizationError) as e:
        check_sample(_unet_sample(tiny_bundle.dims, **changes), UNET, tiny_bundle.dims, where="shard")
    assert message in str(e.value)


def test_matching_tensors_pass(tiny_bundle):
    check_sample(_unet_sample(tiny_bundle.dims), UNET, tiny_bundle.dims, where="shard")
    check_sample({"latents": np.zeros((3, 4, 16, 16), np.float32)}, VAE_DECODER, tiny_bundle.dims, where="shard")


def test_mismatched_shard_stops_quantize(calibrated_bundle, tmp_path, run_cli):
    bundle = copy_bundle(calibrated_bundle, tmp_path)
    shard = "calibration/default/unet-000.npz"
    np.savez(bundle.path / shard, sample=np.zeros((2, 4, 8, 16, 16), np.float32))
    rerecord(bundle.path, shard)  # recorded as the bundle's file: the shard's content is what is wrong
    _fails_cleanly(run_cli, bundle.path, "quantize", bundle.path, "--precision", "int8",
                   match="do not match the inputs of unet")


def test_corrupt_shard_stops_quantize(calibrated_bundle, tmp_path, run_cli):
    bundle = copy_bundle(calibrated_bundle, tmp_path)
    shard = "calibration/default/unet-001.npz"
    (bundle.path / shard).write_bytes((bundle.path / shard).read_bytes()[:200])
    # a truncated file is caught before quantize reads it (Bundle.check_file), naming the shard and
    # the command that records the set again with its recorded options
    err = _fails_cleanly(run_cli, bundle.path, "quantize", bundle.path, "--precision", "int8",
                         match=f"{shard} does not match its recorded sha256")
    # 'default' is the default set name
    assert f"svdtrt calibrate {bundle.path} --count 2 --steps 3 --seed 0 --force" in err
    rerecord(bundle.path, shard)  # and a recorded one by the shard reader, with the same command
    err = _fails_cleanly(run_cli, bundle.path, "quantize", bundle.path, "--precision", "int8", match="is corrupt")
    assert f"record the set again with 'svdtrt calibrate {bundle.path} --count 2 --steps 3 --seed 0 --force'" in err


def test_pickled_shard_is_refused(calibrated_bundle, tmp_path, run_cli):
    bundle = copy_bundle(calibrated_bundle, tmp_path)
    np.savez(bundle.path / "calibration/default/unet-000.npz", sample=np.array([{"a": 1}], dtype=object))
    rerecord(bundle.path, "calibration/default/unet-000.npz")
    _fails_cleanly(run_cli, bundle.path, "quantize", bundle.path, "--precision", "int8", match="is corrupt")


def test_quantize_without_calibration_set(tiny_bundle, tmp_path, run_cli):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    _fails_cleanly(run_cli, bundle.path, "quantize", bundle.path, "--precision", "int8",
                   match="has no calibration set 'default'")


def test_quantize_component_without_samples(calibrated_bundle, tmp_path, run_cli):
    bundle = copy_bundle(calibrated_bundle, tmp_path)

    def drop_samples(manifest):
        manifest.calibration["default"].components["vae_decoder"].calibration = []

    rerecord(bundle.path, edit=drop_samples)
    _fails_cleanly(run_cli, bundle.path, "quantize", bundle.path, "--precision", "int8",
                   match="no calibration samples for vae_decoder")


def test_empty_image_folder(tiny_bundle, tmp_path, run_cli):
    bundle = copy_bundle(tiny_bundle, tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("no images here")
    _fails_cleanly(run_cli, bundle.path, "calibrate", bundle.path, "--images", tmp_path / "photos",
                   match="holds no image file")


def test_interrupted_calibration_leaves_bundle_as_it_was(tiny_bundle, tmp_path, monkeypatch):
    from svdtrt.calibration import capture
    from svdtrt.calibration.capture import calibrate_bundle, calibration_images

    bundle = copy_bundle(tiny_bundle, tmp_path)
    before = snapshot(bundle.path)
    written = []

    def save_then_interrupt(path, inputs):
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt
        np.savez(path, **inputs)

    monkeypatch.setattr(capture, "save_shard", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        calibrate_bundle(bundle.path, calibration_images(count=2), steps=2, progress=False)
    assert snapshot(bundle.path) == before
    assert Bundle.open(bundle.path).manifest.calibration == {}
    assert sorted(p.name for p in bundle.path.parent.iterdir()) == ["bundle"]  # no staged folder left


def test_interrupted_quantization_leaves_bundle_as_it_was(calibrated_bundle, tmp_path, monkeypatch):
    from svdtrt.calibration import quantize

    bundle = copy_bundle(calibrated_bundle, tmp_path)
    before = snapshot(bundle.path)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "held_out_accuracy", interrupt, raising=False)
    monkeypatch.setattr("svdtrt.calibration.evaluate.held_out_accuracy", interrupt)
    with pytest.raises(KeyboardInterrupt):
        quantize.quantize_bundle(bundle.path, "int8", progress=False)
    assert snapshot(bundle.path) == before
    assert sorted(p.name for p in bundle.path.parent.iterdir()) == ["bundle"]  # no scratch left


@pytest.mark.parametrize("fault", ["non_zero_zero_point", "no_qdq"])
def test_check_refuses_invalid_quantized_graph(int8_bundle, tmp_path, run_cli, photo, fault):
    import onnx
    from onnx import numpy_helper

    bundle = copy_bundle(int8_bundle, tmp_path)
    graph = bundle.path / "unet.int8.onnx"
    if fault == "no_qdq":
        shutil.copy(bundle.path / "unet.fp32.onnx", graph)  # its weights stay in unet.fp32.onnx.data
        match = "no Q/DQ node"
    else:
        model = onnx.load(graph, load_external_data=False)
        zp = next(t for t in model.graph.initializer if t.name.endswith("_zero_point"))
        zp.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zp) + 1, zp.name))
        onnx.save(model, graph)
        match = "non-zero zero point"
    rerecord(bundle.path, graph.name)  # the replaced graph is recorded: its content is what is wrong
    image = tmp_path / "photo.png"
    photo.save(image)
    _fails_cleanly(run_cli, bundle.path, "check", bundle.path, "--image", image, "--precision", "int8",
                   "--steps", "2", match=match)
