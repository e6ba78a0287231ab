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

from svdtrt.bundle.store import Bundle
from svdtrt.errors import EngineError
from svdtrt.models.modules import example_inputs
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
    assert "the tensorrt backend needs TensorRT" in err and "[tensorrt]' --extra-index-url" in err
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
    from svdtrt.media.images import sample_image

    path = tmp_path / "input.png"
    sample_image("astronaut").save(path)
    return path


# ---- with TensorRT and a CUDA GPU -------------------------------------------------------------


def _compare_with_onnxruntime(bundle, backend, precision="fp32", min_cosine=0.9999, frames=4, height=64, width=64):
    reference = OnnxRuntimeBackend(bundle, precision)
    for name, spec in COMPONENTS.items():
        inputs = example_inputs(spec, bundle.dims.sizes(spec.batch[1], frames, height, width))
        got = backend.component(name)({k: v.cuda() for k, v in inputs.items()})
        expected = reference.component(name)(inputs)
        for out, ref in expected.items():
            actual = got[out].cpu()
            assert actual.shape == ref.shape and actual.dtype == torch.float32
            cosine = torch.nn.functional.cosine_similarity(actual.flatten(), ref.flatten(), dim=0).item()
            assert cosine > min_cosine, (name, out, cosine)
            if precision == "fp32":
                assert (actual - ref).abs().max().item() < 1e-2 * max(1.0, ref.abs().max().item()), (name, out)


@pytest.fixture(scope="module")
def engines_bundle(tiny_bundle, tmp_path_factory):
    """One tiny bundle for every GPU test (audit defect 11: each used to build its own): fp16 graphs
    converted, int8 graphs quantized from a calibration set, and fp32, fp16 and int8 engines built
    with one shared timing cache. Read-only: tests that change engines work on a copy
    (:func:`_copy`), which keeps the timing cache."""
    from svdtrt.cli.main import main

    root = tmp_path_factory.mktemp("engines")
    path = shutil.copytree(tiny_bundle.path, root / "tiny")
    cache = root / "timing.cache"
    for args in (["convert", path], ["calibrate", path, "--count", "2", "--steps", "2"],
                 ["quantize", path, "--precision", "int8"],
                 *(["build", path, "--precision", p, "--timing-cache", cache] for p in ("fp32", "fp16", "int8"))):
        assert main([str(a) for a in args]) == 0, args
    bundle = Bundle.open(path)
    bundle.timing_cache = cache
    return bundle


def _copy(bundle, tmp_path):
    copy = Bundle.open(shutil.copytree(bundle.path, tmp_path / "copy"))
    copy.timing_cache = bundle.timing_cache
    return copy


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision, min_cosine", [("fp32", 0.9999), ("fp16", 0.999), ("int8", 0.98)])
def test_engines_match_onnxruntime_and_are_reused(engines_bundle, run_cli, precision, min_cosine):
    import tensorrt

    sidecar = json.loads((engines_bundle.path / "engines" / f"unet.{precision}.engine.json").read_text())
    assert sidecar["tensorrt"] == tensorrt.__version__ and sidecar["precision"] == precision
    assert sidecar["gpu"]["name"] == torch.cuda.get_device_name()
    _compare_with_onnxruntime(engines_bundle, create_backend("tensorrt", engines_bundle, precision), precision,
                              min_cosine)
    code, out, _ = run_cli("build", engines_bundle.path, "--precision", precision, "--timing-cache",
                           engines_bundle.timing_cache)
    assert code == 0 and out.count("reused (current)") == 4


@pytest.mark.tensorrt
def test_static_unet_engine_with_cuda_graph_matches_without(engines_bundle, run_cli, tmp_path):
    bundle = _copy(engines_bundle, tmp_path)
    code, _, err = run_cli("build", bundle.path, "--precision", "fp32", "--profile", "static", "--components", "unet",
                           "--timing-cache", bundle.timing_cache)
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
    # batch 1 (after --guidance-steps) runs on the same static engine, in a graph of its own
    single = {k: v[1:] for k, v in shifted.items()}
    torch.testing.assert_close(graphed(single)["noise_pred"],
                               create_backend("tensorrt", bundle, "fp32").component("unet")(single)["noise_pred"],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(graphed(inputs)["noise_pred"], first, rtol=1e-4, atol=1e-4)  # batch 2's graph again
    with pytest.raises(EngineError, match="outside the engine's optimization profile"):
        graphed({**inputs, "sample": inputs["sample"][:, :3]})  # another clip size is not in a static engine


@pytest.mark.tensorrt
def test_engine_from_another_tensorrt_is_refused_on_the_gpu(engines_bundle, tmp_path):
    bundle = _copy(engines_bundle, tmp_path)
    path = bundle.path / "engines" / "image_encoder.fp32.engine.json"
    sidecar = json.loads(path.read_text())
    sidecar["tensorrt"] = "9.0.0"
    path.write_text(json.dumps(sidecar))
    bundle = rerecord(bundle.path, "engines/image_encoder.fp32.engine.json")  # the sidecar replaced as a whole
    with pytest.raises(EngineError, match="built with TensorRT 9.0.0"):
        create_backend("tensorrt", bundle, "fp32").component("image_encoder")


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_sampling_loop_on_tensorrt_passes_check(engines_bundle, run_cli, tmp_path, precision):
    image = _image(tmp_path)
    frames = {}
    for backend in ("onnxruntime", "tensorrt"):
        code, _, err = run_cli("run", engines_bundle.path, "--image", image, "--out", tmp_path / f"{backend}.mp4",
                               "--save-frames", tmp_path / f"{backend}.npy", "--backend", backend,
                               "--precision", precision, "--steps", "4")
        assert code == 0, err
        frames[backend] = np.load(tmp_path / f"{backend}.npy")
    from svdtrt.media.metrics import psnr

    assert frames["tensorrt"].shape == frames["onnxruntime"].shape
    assert psnr(frames["tensorrt"], frames["onnxruntime"]) > {"fp32": 50.0, "fp16": 35.0, "int8": 25.0}[precision]
    code, out, err = run_cli("check", engines_bundle.path, "--image", image, "--backend", "tensorrt",
                             "--precision", precision, "--steps", "4")
    assert code == 0, out + err
    assert f"accuracy of tensorrt ({precision})" in out and "PASSED" in out


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "onnxruntime-trt"])
def test_onnxruntime_gpu_providers_run_on_the_gpu_without_host_copies(engines_bundle, backend):
    """The session runs on the provider asked for (no silent CPU fallback) and the loop's tensors
    stay on the GPU (IOBinding)."""
    from svdtrt.graphs.sessions import provider_loads

    provider = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-trt": "TensorrtExecutionProvider"}[backend]
    problem = provider_loads(provider)
    if problem:
        pytest.skip(problem)
    gpu = create_backend(backend, engines_bundle, "fp32")
    assert gpu.device.type == "cuda"
    inputs = {k: v.cuda() for k, v in example_inputs(COMPONENTS["vae_decoder"],
                                                     engines_bundle.dims.sizes(1, 4, 64, 64)).items()}
    frames = gpu.component("vae_decoder")(inputs)["frames"]
    assert frames.device.type == "cuda" and gpu.session_providers["vae_decoder"][0] == provider
    reference = OnnxRuntimeBackend(engines_bundle).component("vae_decoder")({k: v.cpu() for k, v in inputs.items()})
    assert torch.nn.functional.cosine_similarity(frames.cpu().flatten(), reference["frames"].flatten(), dim=0) > 0.9999
