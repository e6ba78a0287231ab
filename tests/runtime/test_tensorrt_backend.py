"""The ``tensorrt`` backend and ONNX Runtime's GPU providers.

On any machine: the one-line errors where TensorRT, Polygraphy or a GPU is missing, and the
ONNX Runtime TensorRT-provider options. With TensorRT and a CUDA GPU (``tensorrt`` marker,
skipped elsewhere with the reason): tiny engines built through ``svdtrt build`` and compared
with ONNX Runtime, the cache, static profiles with a CUDA graph, and the sampling loop.
"""

from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from svdtrt.bundle import Bundle
from svdtrt.components import example_inputs
from svdtrt.errors import EngineError
from svdtrt.runtime.backends import create_backend
from svdtrt.runtime.backends.onnxrt import OnnxRuntimeBackend, ort_tensorrt_cache, ort_tensorrt_options
from svdtrt.specs import COMPONENTS

from ..helpers import rerecord


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return Bundle.open(shutil.copytree(tiny_bundle.path, tmp_path / "tiny"))


@pytest.mark.parametrize("command", ["run", "check"])
def test_tensorrt_backend_without_tensorrt_is_one_line_exit_2(tiny_bundle, run_cli, monkeypatch, tmp_path, command):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, also on a TensorRT machine
    extra = ["--out", tmp_path / "clip.mp4"] if command == "run" else []
    code, out, err = run_cli(command, tiny_bundle.path, "--image", _image(tmp_path), "--backend", "tensorrt", *extra)
    assert code == 2 and err.count("\n") == 1, err
    assert "the tensorrt backend needs TensorRT" in err and "pip install -e '.[tensorrt]'" in err
    assert not (tmp_path / "clip.mp4").exists()


def test_tensorrt_backend_without_gpu_names_the_gpu(tiny_bundle, monkeypatch):
    from svdtrt.errors import BackendUnavailableError

    for name in ("tensorrt", "polygraphy"):  # present, so that only the GPU is missing
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError) as e:
        create_backend("tensorrt", tiny_bundle, "fp16")
    message = str(e.value)
    assert "needs a CUDA GPU" in message and "TensorRT (" not in message and "NVIDIA GPU" in message


def test_onnxruntime_gpu_backend_without_its_provider_is_one_line_exit_2(tiny_bundle, run_cli, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    code, _, err = run_cli("run", tiny_bundle.path, "--image", _image(tmp_path), "--out", tmp_path / "c.mp4",
                           "--backend", "onnxruntime-cuda")
    assert code == 2 and err.count("\n") == 1 and "lacks CUDAExecutionProvider" in err and "onnxruntime-gpu" in err


def test_onnxruntime_tensorrt_provider_options_follow_the_profile(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = sorted(p.relative_to(bundle.path) for p in bundle.path.rglob("*"))
    options = ort_tensorrt_options(bundle, "unet", "fp16")
    assert options["trt_profile_min_shapes"] == "sample:1x4x8x16x16,timestep:1,encoder_hidden_states:1x1x32,added_time_ids:1x3"
    assert options["trt_profile_opt_shapes"] == "sample:2x4x8x16x16,timestep:2,encoder_hidden_states:2x1x32,added_time_ids:2x3"
    assert options["trt_engine_cache_enable"] and options["trt_fp16_enable"] and not options["trt_int8_enable"]
    # the provider's engines live in the user's cache, keyed by the bundle, never inside the bundle
    cache = ort_tensorrt_cache(bundle)
    assert cache.parent == tmp_path / "cache" / "svdtrt" / "ort-trt" and cache.is_dir()
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(cache)
    assert sorted(p.relative_to(bundle.path) for p in bundle.path.rglob("*")) == before


def _image(tmp_path):
    from svdtrt.images import sample_image

    path = tmp_path / "input.png"
    sample_image("astronaut").save(path)
    return path


# ---- with TensorRT and a CUDA GPU -------------------------------------------------------------


def _compare_with_onnxruntime(bundle, backend, frames=4, height=64, width=64):
    reference = OnnxRuntimeBackend(bundle)
    for name, spec in COMPONENTS.items():
        inputs = example_inputs(spec, bundle.dims.sizes(spec.batch[1], frames, height, width))
        got = backend.component(name)({k: v.cuda() for k, v in inputs.items()})
        expected = reference.component(name)(inputs)
        for out, ref in expected.items():
            actual = got[out].cpu()
            assert actual.shape == ref.shape and actual.dtype == torch.float32
            cosine = torch.nn.functional.cosine_similarity(actual.flatten(), ref.flatten(), dim=0).item()
            assert cosine > 0.9999, (name, out, cosine)
            assert (actual - ref).abs().max().item() < 1e-2 * max(1.0, ref.abs().max().item()), (name, out)


@pytest.mark.tensorrt
def test_fp32_engines_match_onnxruntime_and_are_reused(bundle, run_cli):
    code, out, err = run_cli("build", bundle.path, "--precision", "fp32")
    assert code == 0, err
    sidecar = json.loads((bundle.path / "engines" / "unet.fp32.engine.json").read_text())
    import tensorrt

    assert sidecar["tensorrt"] == tensorrt.__version__
    assert sidecar["gpu"]["name"] == torch.cuda.get_device_name()
    bundle = Bundle.open(bundle.path)  # with the engines the build recorded
    _compare_with_onnxruntime(bundle, create_backend("tensorrt", bundle, "fp32"))
    code, out, _ = run_cli("build", bundle.path, "--precision", "fp32")
    assert code == 0 and out.count("reused (current)") == 4


@pytest.mark.tensorrt
def test_static_unet_engine_with_cuda_graph_matches_without(bundle, run_cli):
    code, _, err = run_cli("build", bundle.path, "--precision", "fp32", "--profile", "static", "--components", "unet")
    assert code == 0, err
    bundle = Bundle.open(bundle.path)  # with the engine the build recorded
    spec = COMPONENTS["unet"]
    inputs = {k: v.cuda() for k, v in example_inputs(spec, bundle.dims.sizes(2, 4, 64, 64)).items()}
    plain = create_backend("tensorrt", bundle, "fp32").component("unet")(inputs)["noise_pred"]
    graphed = create_backend("tensorrt", bundle, "fp32", cuda_graph=True).component("unet")
    first = graphed(inputs)["noise_pred"]
    shifted = {**inputs, "sample": inputs["sample"] + 0.5}
    second = graphed(shifted)["noise_pred"]  # replayed with new inputs copied in
    torch.testing.assert_close(first, plain, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(second, first)
    expected = create_backend("tensorrt", bundle, "fp32").component("unet")(shifted)["noise_pred"]
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(EngineError, match="outside the engine's optimization profile"):
        graphed({**inputs, "sample": inputs["sample"][:1], "timestep": inputs["timestep"][:1],
                 "encoder_hidden_states": inputs["encoder_hidden_states"][:1],
                 "added_time_ids": inputs["added_time_ids"][:1]})


@pytest.mark.tensorrt
def test_engine_from_another_tensorrt_is_refused_on_the_gpu(bundle, run_cli):
    assert run_cli("build", bundle.path, "--precision", "fp32", "--components", "image_encoder")[0] == 0
    path = bundle.path / "engines" / "image_encoder.fp32.engine.json"
    sidecar = json.loads(path.read_text())
    sidecar["tensorrt"] = "9.0.0"
    path.write_text(json.dumps(sidecar))
    bundle = rerecord(bundle.path, "engines/image_encoder.fp32.engine.json")  # the sidecar replaced as a whole
    with pytest.raises(EngineError, match="built with TensorRT 9.0.0"):
        create_backend("tensorrt", bundle, "fp32").component("image_encoder")


@pytest.mark.tensorrt
def test_sampling_loop_on_tensorrt_matches_onnxruntime(bundle, run_cli, tmp_path):
    assert run_cli("build", bundle.path, "--precision", "fp32")[0] == 0
    image = _image(tmp_path)
    frames = {}
    for backend in ("onnxruntime", "tensorrt"):
        code, _, err = run_cli("run", bundle.path, "--image", image, "--out", tmp_path / f"{backend}.mp4",
                               "--save-frames", tmp_path / f"{backend}.npy", "--backend", backend, "--steps", "4")
        assert code == 0, err
        frames[backend] = np.load(tmp_path / f"{backend}.npy")
    from svdtrt.accuracy import psnr

    assert frames["tensorrt"].shape == frames["onnxruntime"].shape
    assert psnr(frames["tensorrt"], frames["onnxruntime"]) > 50.0
    code, out, err = run_cli("check", bundle.path, "--image", image, "--backend", "tensorrt", "--steps", "4")
    assert code == 0, out + err
    assert "accuracy of tensorrt (fp32)" in out and "PASSED" in out
