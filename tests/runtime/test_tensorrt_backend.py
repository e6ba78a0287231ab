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

from .. import standins
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


# ---- the backend on stand-ins for TensorRT and CUDA (tests/standins.py) -----------------------------
# Audited defects of the second audit (docs/tensorrt.md, "Second audit"); each test names its defect.


@pytest.fixture
def standin(bundle, tmp_path, monkeypatch):
    """The stand-ins installed: ``.log`` (:class:`tests.standins.Log`); ``.build(**plan_options)``
    builds stand-in engines into the bundle copy with the real build stage and returns the
    re-opened bundle; ``.backend(bundle, **options)`` is the real TensorRT backend on them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    log = standins.install(monkeypatch, bundle.dims)

    def build(**plan_options):
        standins.build_standin_engines(monkeypatch, bundle.path, **plan_options)
        return Bundle.open(bundle.path)

    return types.SimpleNamespace(log=log, build=build, backend=standins.standin_backend)


def _unet_inputs(bundle, batch, steps=4):
    """The UNet's inputs as the loop makes them on a step: the timestep and, at batch 1 (after
    --guidance-steps), the conditioning are views into larger tensors, at offsets of 4 * i bytes."""
    timesteps = torch.linspace(1.0, 0.1, steps)
    inputs = example_inputs(COMPONENTS["unet"], bundle.dims.sizes(2, 4, 64, 64))
    return {"sample": inputs["sample"][:batch].clone(), "timestep": timesteps[steps - 1].expand(batch),
            "encoder_hidden_states": inputs["encoder_hidden_states"][-batch:],
            "added_time_ids": inputs["added_time_ids"][-batch:]}


def test_io_addresses_are_256_byte_aligned_and_every_refusal_is_an_error(standin):
    """Defect 5: views at unaligned offsets were bound as they were, and the return values of
    set_input_shape and set_tensor_address were ignored."""
    backend = standin.backend(standin.build(components=["unet"]))
    unet = backend.component("unet")
    for batch in (2, 1):
        inputs = _unet_inputs(backend.bundle, batch)
        assert batch == 2 or inputs["timestep"].data_ptr() % 256  # the loop's batch-1 timestep is misaligned
        outputs = unet(inputs)
        (context,) = backend._runners["unet"].engine.contexts
        assert context.refused == []
        seen = context.inputs_seen[-1]
        for name, value in inputs.items():  # the engine read the values given, wherever they were
            np.testing.assert_array_equal(seen[name], value.numpy())
        total = sum(float(v.double().sum()) for v in inputs.values())
        assert outputs["noise_pred"].shape == (batch, 4, 4, 16, 16)
        torch.testing.assert_close(outputs["noise_pred"], torch.full_like(outputs["noise_pred"], total))
    context.set_input_shape = lambda name, shape: False
    with pytest.raises(EngineError, match=r"unet: TensorRT refused the shape \[2, 4, 8, 16, 16\] of input 'sample'"):
        unet(_unet_inputs(backend.bundle, 2))
    context.set_input_shape = lambda name, shape: True
    context.set_tensor_address = lambda name, address: False
    with pytest.raises(EngineError, match="refused the address of 'sample'.*256-byte alignment"):
        unet(_unet_inputs(backend.bundle, 2))


def test_each_cuda_graph_has_its_own_execution_context(standin):
    """Defect 4: batch 2's and batch 1's CUDA graphs were captured from one context, so capturing
    the second changed the state the first replays with."""
    bundle = standin.build(components=["unet"], profile="static")
    graphed, plain = standin.backend(bundle, cuda_graph=True), standin.backend(bundle)
    unet, reference = graphed.component("unet"), plain.component("unet")
    for batch in (2, 1, 2, 1):  # guidance, then --guidance-steps' batch 1, on two clips
        inputs = _unet_inputs(bundle, batch)
        inputs["sample"] = inputs["sample"] + batch  # other values every call
        torch.testing.assert_close(unet(inputs)["noise_pred"], reference(inputs)["noise_pred"])
    runner = graphed._runners["unet"]
    contexts = [graph[0] for graph in runner._graphs.values()]
    assert len(runner._graphs) == 2 and len({id(c) for c in contexts}) == 2
    assert runner.engine.contexts == contexts  # no other context: one per graph
    assert standin.log.count("replay", "unet") == 4


def test_cuda_graph_covers_the_block_caching_engines(standin, photo):
    """Defect 12: --cuda-graph captured only unet, not unet_full and unet_shallow."""
    from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline

    bundle = standin.build(profile="static", block_caching=True)
    backend, log = standin.backend(bundle, cuda_graph=True), standin.log
    clip = SvdPipeline(backend, bundle)(photo, SamplingSettings(4, 64, 64, steps=4, cache_interval=2))
    assert clip.unet_calls == [("unet_full", 2), ("unet_shallow", 2)] * 2
    assert log.count("replay", "unet_full") == log.count("replay", "unet_shallow") == 2
    assert log.count("run", "image_encoder") == log.count("run", "vae_decoder") == 1  # not graphed


def test_one_engine_at_a_time_loads_each_engine_once_per_clip_with_block_caching(standin, photo):
    """Defect 6: unet_full and unet_shallow alternate every step, and each switch released the
    other engine, so with block caching every step reloaded a UNet engine."""
    from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline

    bundle = standin.build(block_caching=True)
    backend, log = standin.backend(bundle, one_engine_at_a_time=True), standin.log
    settings = SamplingSettings(4, 64, 64, steps=6, cache_interval=2)
    SvdPipeline(backend, bundle)(photo, settings)
    loads = [e[1] for e in log.events if e[0] == "load"]
    assert loads == ["image_encoder", "vae_encoder", "unet_full", "unet_shallow", "vae_decoder"]
    assert list(backend._runners) == ["vae_decoder"]  # the other stages' engines were released
    SvdPipeline(backend, bundle)(photo, settings)
    assert [e[1] for e in log.events if e[0] == "load"] == loads * 2  # once per clip


def test_engines_share_one_activation_block_sized_to_the_largest(standin, photo):
    """Defect 10: every engine kept its own activation memory (one STATIC context each), so the
    decoder's full-clip block stayed allocated beside the UNet's."""
    from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline

    sizes = {"image_encoder": 1000, "vae_encoder": 50_000, "unet": 30_000, "vae_decoder": 200_000}
    bundle = standin.build(device_memory=sizes, profile="static")
    backend = standin.backend(bundle, cuda_graph=True)
    for _ in range(2):  # the UNet's CUDA graph was captured before the decoder grew the block: captured again
        SvdPipeline(backend, bundle)(photo, SamplingSettings(4, 64, 64, steps=2))
    assert standin.log.count("replay", "unet") == 4
    contexts = [c for runner in backend._runners.values() for c in runner.engine.contexts]
    managed = standins.TensorRT.ExecutionContextAllocationStrategy.USER_MANAGED
    assert {c.strategy for c in contexts} == {managed}
    live = [c for c in contexts if c.engine.component != "unet"] + [
        graph[0] for graph in backend._runners["unet"]._graphs.values()]
    (memory,) = {c.device_memory for c in live}  # one block, every context re-pointed as it grew
    assert memory[1] == backend.block.size == max(sizes.values()) and memory[0] % 512 == 0
    backend.close()
    assert backend.block.size == 0 and not backend._runners


def test_a_corrupt_engine_is_one_line_with_the_rebuild_command(standin):
    """Defect 12: Polygraphy's EngineFromBytes raises PolygraphyException for an engine TensorRT
    cannot deserialize; it became a traceback instead of the EngineError naming the rebuild."""
    bundle = standin.build(components=["image_encoder"])
    (bundle.path / "engines" / "image_encoder.fp32.engine").write_bytes(b"not an engine")
    bundle = rerecord(bundle.path, "engines/image_encoder.fp32.engine")  # a recorded file TensorRT refuses
    backend = standin.backend(bundle)
    run = backend.component("image_encoder")  # the sidecar still matches: the engine's bytes do not
    with pytest.raises(EngineError) as e:
        run(example_inputs(COMPONENTS["image_encoder"], bundle.dims.sizes(1, 4, 64, 64)))
    message = str(e.value)
    assert "\n" not in message and "TensorRT could not deserialize" in message
    assert f"svdtrt build {bundle.path} --precision fp32 --profile dynamic --components image_encoder --force" in message


def test_tensorrt_older_than_the_floor_is_refused(monkeypatch):
    """The version floor the backend's calls need (svdtrt.environment.TENSORRT_FLOOR)."""
    from svdtrt.environment import require_tensorrt
    from svdtrt.errors import BackendUnavailableError

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.2"))  # JetPack 6.0's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # Polygraphy is installed: only the version
    with pytest.raises(BackendUnavailableError) as e:
        require_tensorrt("the tensorrt backend")
    message = str(e.value)
    assert "\n" not in message and "needs TensorRT 10.3 or later (JetPack 6.1 or later on a Jetson), this " \
        "machine has 8.6.2" in message
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.30"))
    assert require_tensorrt().__version__ == "10.3.0.30"


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
