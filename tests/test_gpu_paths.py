"""GPU paths made right by construction (issue: the audit of the TensorRT and ONNX Runtime GPU
paths), checked here with ONNX Runtime's CPU build and stand-ins only where a GPU or TensorRT
would run: each audited defect has a test that fails without its fix (docs/tensorrt.md, "Audit")."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import tomllib
import torch

from svdtrt.bundle import engines
from svdtrt.errors import BackendUnavailableError
from svdtrt.models.modules import example_inputs
from svdtrt.runtime.backends.base import Backend
from svdtrt.specs import COMPONENTS

ROOT = Path(__file__).resolve().parents[1]


class _TensorRTWithoutEngines(Backend):
    """The tensorrt backend as on a machine with TensorRT and a GPU but no engines built yet: its
    component lookup is the real one (engines.usable_engine), which raises EngineError."""

    name = "tensorrt"
    device = torch.device("cpu")

    def __init__(self, bundle, precision):
        self.bundle, self.precision = bundle, precision

    def component(self, name):
        engines.usable_engine(self.bundle, name, self.precision, "10.8.0",
                              {"name": "NVIDIA H100", "compute_capability": "9.0"})

    def synchronize(self):
        pass


def test_bench_skips_a_tensorrt_row_without_engines_instead_of_aborting(tiny_bundle, tiny_model, photo,
                                                                        monkeypatch):
    """Defect 1: EngineError (no engine yet) used to abort the whole benchmark."""
    from svdtrt.benchmark import run_benchmark
    from svdtrt.runtime import backends
    from svdtrt.runtime.pipeline import SamplingSettings

    real = backends.create_backend
    monkeypatch.setattr(backends, "create_backend", lambda name, bundle, precision, **kw: (
        _TensorRTWithoutEngines(bundle, precision) if name == "tensorrt" else real(name, bundle, precision, **kw)))
    settings = SamplingSettings(*tiny_bundle.default_shape, steps=1)
    results = run_benchmark(tiny_bundle, photo, settings, tiny_model, ["onnxruntime", "tensorrt"], ["fp32"],
                            warmup=0, repeat=1, device="cpu")
    rows = {(r["backend"], r["precision"]): r for r in results.to_json()["rows"]}
    assert rows["onnxruntime", "fp32"]["status"] == "measured"
    assert rows["tensorrt", "fp32"]["status"] == "skipped"
    assert "no fp32 engine for image_encoder" in rows["tensorrt", "fp32"]["reason"]
    assert f"svdtrt build {tiny_bundle.path} --precision fp32" in rows["tensorrt", "fp32"]["reason"]


def _requirement_names(requirements) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_no_install_line_installs_two_onnx_runtimes():
    """Defect 2: the GPU extra used to add onnxruntime-gpu beside the base onnxruntime."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _requirement_names(project["dependencies"])
    extras = {k: _requirement_names(v) for k, v in project["optional-dependencies"].items()}
    assert not {"onnxruntime", "onnxruntime-gpu"} & base
    for name, names in extras.items():
        assert len({"onnxruntime", "onnxruntime-gpu"} & names) <= 1, name
    assert "onnxruntime" in extras["cpu"] and "onnxruntime-gpu" in extras["cuda"]
    assert {"onnxruntime-gpu", "tensorrt", "polygraphy"} <= extras["tensorrt"]
    assert "polygraphy" in extras["test"]  # Polygraphy's real objects, on CI too
    for name, names in extras.items():  # the test extra goes beside any runtime extra
        assert len({"onnxruntime", "onnxruntime-gpu"} & (names | extras["test"])) <= 1, name
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e '.[cpu,test]' && python -m pytest -q" in readme and "'.[tensorrt,test]'" in readme
    assert "-e '.[cpu,test]'" in (ROOT / ".ci" / "run").read_text()


def _only_onnxruntime_gpu(monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name == "onnxruntime":
            raise importlib.metadata.PackageNotFoundError(name)
        return "1.31.1" if name == "onnxruntime-gpu" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


def test_versions_are_read_with_only_onnxruntime_gpu_installed(monkeypatch):
    """Defect 3: version('onnxruntime') raises where only onnxruntime-gpu is installed."""
    from svdtrt.environment import onnxruntime_package, tool_versions

    _only_onnxruntime_gpu(monkeypatch)
    assert onnxruntime_package() == "onnxruntime-gpu"
    assert tool_versions()["onnxruntime"] == "1.31.1"


def test_a_session_that_falls_back_to_another_provider_is_refused(tiny_bundle, monkeypatch):
    """Defect 5: listing a provider (get_available_providers) is not loading it; ONNX Runtime
    falls back to the CPU with a warning. Here the CPU build is made to list CUDA."""
    import onnxruntime as ort

    from svdtrt.graphs.sessions import provider_loads
    from svdtrt.runtime.backends import create_backend

    listed = ort.get_available_providers()
    if "CUDAExecutionProvider" in listed:
        pytest.skip("this ONNX Runtime has the CUDA provider")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*listed, "CUDAExecutionProvider"])
    backend = create_backend("onnxruntime-cuda", tiny_bundle)  # the listing passes ...
    with pytest.warns(UserWarning), pytest.raises(BackendUnavailableError) as e:
        backend.component("vae_decoder")  # ... the session does not run on CUDA
    assert "could not load CUDAExecutionProvider and would run on CPUExecutionProvider" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.warns(UserWarning):
        problem = provider_loads("CUDAExecutionProvider")  # what 'svdtrt doctor' reports
    assert problem and "could not load CUDAExecutionProvider" in problem
    assert provider_loads("CPUExecutionProvider") is None


def test_onnxruntime_sessions_report_the_provider_that_runs_them(tiny_bundle):
    from svdtrt.runtime.backends import create_backend

    backend = create_backend("onnxruntime", tiny_bundle)
    backend.component("vae_decoder")
    assert backend.session_providers == {"vae_decoder": ["CPUExecutionProvider"]}


def _bound_run(bundle, component, inputs, written_by=None, wrap=lambda session: session):
    """The binding path the CUDA providers take (:func:`run_bound`), on the CPU device, with the
    session ``wrap``-ped, and the numpy path's outputs for the same inputs."""
    from svdtrt.graphs.sessions import input_types, output_types
    from svdtrt.runtime.backends.onnxrt import OnnxRuntimeBackend, run_bound
    from svdtrt.specs import output_shapes

    backend = OnnxRuntimeBackend(bundle)
    expected = backend.component(component)(inputs)
    session = wrap(backend.session(component))
    shapes = output_shapes(COMPONENTS[component], bundle.dims, {n: tuple(t.shape) for n, t in inputs.items()})
    outputs = {n: (shapes[n], t) for n, t in output_types(session).items()}
    waits = {} if written_by is None else {"written_by": written_by}
    return run_bound(session, inputs, input_types(session), outputs, torch.device("cpu"), **waits), expected


def test_io_binding_gives_the_same_outputs_as_a_plain_run_without_dlpack(tiny_bundle, monkeypatch):
    """Second audit, defect 1: outputs came back through OrtValue.__dlpack__, which onnxruntime
    has only from 1.26 (pyproject admits 1.20). Here the installed OrtValue is made a 1.25 one; the
    outputs are bound into torch tensors allocated before the run, in every version."""
    import onnxruntime as ort

    for name in ("__dlpack__", "__dlpack_device__"):
        if hasattr(ort.OrtValue, name):
            monkeypatch.delattr(ort.OrtValue, name)
    for component, batch in (("unet", 2), ("unet_full", 1), ("vae_decoder", 3)):
        inputs = example_inputs(COMPONENTS[component], tiny_bundle.dims.sizes(batch, 4, 64, 64))
        got, expected = _bound_run(tiny_bundle, component, inputs)
        assert got.keys() == expected.keys()
        for name, tensor in got.items():
            assert tensor.dtype == torch.float32 and torch.equal(tensor, expected[name]), (component, name)


def test_io_binding_run_waits_for_the_stream_that_wrote_its_inputs(tiny_bundle):
    """Second audit, defect 2: sessions were given torch's default stream (handle 0, which ONNX
    Runtime reads as none given), and a run on an IOBinding does not wait for its inputs, so ONNX
    Runtime could read them before torch's kernels had written them. The stream that wrote them is
    synchronised before the run."""
    from .standins import Log, StandInStream

    log = Log()

    class Recording:  # the real session, its runs written into the same log as the stream's waits
        def __init__(self, session):
            self.session = session

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run_with_iobinding(self, binding, *args):
            log.events.append(("run", "session"))
            return self.session.run_with_iobinding(binding, *args)

    inputs = example_inputs(COMPONENTS["vae_decoder"], tiny_bundle.dims.sizes(1, 4, 64, 64))
    got, expected = _bound_run(tiny_bundle, "vae_decoder", inputs, StandInStream(log, 0x7), Recording)
    assert log.events == [("sync", 0x7), ("run", "session")]
    assert torch.equal(got["frames"], expected["frames"])


def test_onnxruntime_trt_switches_fp16_on_for_every_fp16_based_graph(tmp_path):
    """Second audit, defect 11: the TensorRT provider builds weakly typed networks, and int8 Q/DQ
    graphs (on an fp16 base) were built without trt_fp16_enable, so their other layers could run
    in fp32."""
    from svdtrt.graphs.sessions import tensorrt_provider_options

    profile = {"x": {"min": [1, 8], "opt": [2, 8], "max": [2, 8]}}
    switches = {p: {k: v for k, v in tensorrt_provider_options(profile, tmp_path, p).items()
                    if k in ("trt_fp16_enable", "trt_int8_enable")} for p in ("fp32", "fp16", "int8", "fp8")}
    assert switches == {"fp32": {"trt_fp16_enable": False, "trt_int8_enable": False},
                        "fp16": {"trt_fp16_enable": True, "trt_int8_enable": False},
                        "int8": {"trt_fp16_enable": True, "trt_int8_enable": True},
                        "fp8": {"trt_fp16_enable": True, "trt_int8_enable": False}}


def test_torch_range_admits_jetpacks_wheel_and_cis_torch():
    """Second audit, defect 12: torch>=2.6 made pip replace NVIDIA's JetPack 6.1 torch (2.5.0a0,
    built with CUDA for Orin) with a PyPI aarch64 build without CUDA."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_req,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"]
    for version in ("2.5.0a0+872d972e41.nv24.08", "2.13.0", "2.13.0+cpu"):  # JetPack 6.1's wheel; CI's
        assert torch_req.specifier.contains(version), version
    assert not torch_req.specifier.contains("2.4.0a0+07cecf4168.nv24.05")  # JetPack 6.0 (TensorRT 8.6)
    assert {"onnxruntime", "polygraphy"} == _requirement_names(project["optional-dependencies"]["jetson"])


def test_torch_fp16_keeps_the_timestep_and_the_upcast_vae_encoder_in_fp32(tiny_model):
    """Defect 8 (diffusers keeps the timestep fp32 in an fp16 pipeline) and force_upcast (its VAE
    encoder runs in fp32); the decoder, CLIP and UNet run in fp16, the caller's model stays fp32."""
    from svdtrt.runtime.backends.pytorch import TorchBackend

    assert tiny_model.configs()["vae"]["force_upcast"]
    backend = TorchBackend(tiny_model, "cpu", torch.float16)
    assert {k: backend.dtypes[k] for k in ("image_encoder", "vae_encoder", "unet", "vae_decoder")} == {
        "image_encoder": torch.float16, "vae_encoder": torch.float32, "unet": torch.float16,
        "vae_decoder": torch.float16}
    seen = {}
    backend._modules["unet"].unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(timestep=args[1].dtype, added_time_ids=kwargs["added_time_ids"].dtype,
                                                 sample=args[0].dtype), with_kwargs=True)
    backend.component("unet")(example_inputs(COMPONENTS["unet"], tiny_model.dims.sizes(2, 4, 64, 64)))
    assert seen == {"timestep": torch.float32, "added_time_ids": torch.float16, "sample": torch.float16}
    encoder = backend._modules["vae_encoder"].vae.encoder
    decoder = backend._modules["vae_decoder"].vae.decoder
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}
    assert {p.dtype for p in decoder.parameters()} == {torch.float16}
    assert {p.dtype for p in tiny_model.vae.parameters()} == {torch.float32}
    latents = backend.component("vae_encoder")(example_inputs(COMPONENTS["vae_encoder"],
                                                             tiny_model.dims.sizes(1, 4, 64, 64)))["latents"]
    reference = TorchBackend(tiny_model).component("vae_encoder")(example_inputs(
        COMPONENTS["vae_encoder"], tiny_model.dims.sizes(1, 4, 64, 64)))["latents"]
    assert torch.equal(latents, reference)  # fp32 on the same device: the same numbers


def test_fp16_bundle_runs_the_vae_encoder_from_its_fp32_graph(tiny_bundle, tmp_path):
    """force_upcast in the graphs: 'svdtrt convert' points the fp16 VAE encoder at the fp32 graph."""
    import shutil

    from svdtrt.bundle.store import Bundle
    from svdtrt.export.convert import convert_bundle

    path = shutil.copytree(tiny_bundle.path, tmp_path / "b")
    bundle = convert_bundle(path, "fp16", progress=False)
    encoder = bundle.manifest.components["vae_encoder"].graphs["fp16"]
    assert encoder.kept_precision == "fp32" and encoder.file == "vae_encoder.fp32.onnx"
    for name in ("image_encoder", "unet", "vae_decoder"):
        graph = bundle.manifest.components[name].graphs["fp16"]
        assert graph.kept_precision is None and graph.file == f"{name}.fp16.onnx"
    assert not (Path(path) / "vae_encoder.fp16.onnx").exists()
    assert Bundle.open(path).graph_path("vae_encoder", "fp16").name == "vae_encoder.fp32.onnx"
