"""The ``onnxruntime`` backends: the bundle's graphs on ONNX Runtime's CPU, CUDA or TensorRT
execution provider."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ...environment import ORT_GPU_HINT
from ...errors import BackendUnavailableError
from ...specs import COMPONENTS
from .base import Backend, ComponentFn

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_TORCH_TYPES = {np.float32: torch.float32, np.float16: torch.float16, np.float64: torch.float64}


class OnnxRuntimeBackend(Backend):
    """The bundle's graphs of one precision on ONNX Runtime; sessions are created on first use.

    Args:
        bundle: an opened :class:`svdtrt.bundle.store.Bundle`.
        precision: which graphs to run (``"fp32"``, ``"fp16"``, ``"int8"``, ``"fp8"``; fp8 on the CPU
            provider is simulated quantization, see :meth:`session`).
        providers: ONNX Runtime execution providers, first choice first; default CPU. With
            ``TensorrtExecutionProvider``, each session gets :func:`ort_tensorrt_options`.
        name: the backend name reported (``onnxruntime``, ``onnxruntime-cuda``, ``onnxruntime-trt``).
        threads: intra-op threads of each session; None keeps ONNX Runtime's default (one per
            physical core). On a CPU shared with other processes, fewer threads than cores is
            faster: a thread pool stalls whenever one of its threads is descheduled.
    On a GPU provider with a CUDA build of torch, the loop's tensors live on the GPU and each
    call binds them to the session in place (ONNX Runtime's IOBinding, on torch's current CUDA
    stream), outputs included: nothing goes through host memory. Elsewhere inputs and outputs
    are CPU tensors shared with numpy without copies.

    Raises:
        BackendUnavailableError: a requested provider is not in this ONNX Runtime build, or
            (when a session is created) ONNX Runtime could not load it and fell back to another.
    Attributes:
        session_providers: ``{component: the providers its session actually runs, first first}``.
    """

    name = "onnxruntime"

    def __init__(self, bundle, precision: str = "fp32", providers: list[str] | None = None,
                 name: str = "onnxruntime", threads: int | None = None):
        import onnxruntime as ort

        self.bundle, self.precision, self.name, self.threads = bundle, precision, name, threads
        self.providers = providers or ["CPUExecutionProvider"]
        missing = set(self.providers) - set(ort.get_available_providers())
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime here lacks {', '.join(sorted(missing))} (it has {', '.join(ort.get_available_providers())}); "
                f"on a machine with CUDA, install onnxruntime-gpu in place of onnxruntime: {ORT_GPU_HINT}")
        on_gpu = self.providers[0] != "CPUExecutionProvider" and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        self.session_providers: dict[str, list[str]] = {}
        self._sessions = {}

    def session(self, name: str):
        """The ONNX Runtime session of component ``name`` (created once).

        Raises:
            BundleError: the graph or its weights cannot be loaded (naming the file and the
                command that rebuilds it).
        """
        if name not in self._sessions:
            import onnxruntime as ort

            from ...errors import BundleError, first_line

            options = session_options(self.precision, self.providers, self.threads)
            graph = self.bundle.graph(name, self.precision)
            for file in (graph.file, graph.data):
                if file:
                    self.bundle.check_file(file)  # hashed once per file version (Bundle.check_file)
            providers = [(p, self._provider_options(p, name)) for p in self.providers]
            try:
                session = ort.InferenceSession(str(self.bundle.path / graph.file), options, providers=providers)
            except Exception as e:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
                raise BundleError(f"ONNX Runtime cannot load {graph.file} of bundle '{self.bundle.path}' "
                                  f"({first_line(e)[:200]}); {self.bundle.remedy(graph.file)}") from None
            active = session.get_providers()
            check_provider_loaded(self.providers[0], active, f"the {self.name} backend ({graph.file})")
            self.session_providers[name] = active
            self._sessions[name] = session
        return self._sessions[name]

    def _provider_options(self, provider: str, component: str) -> dict:
        options = {}
        if provider == "TensorrtExecutionProvider":
            options = ort_tensorrt_options(self.bundle, component, self.precision)
        if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and self.device.type == "cuda":
            # Run on torch's stream: the inputs the loop wrote are ordered before the session
            # reads them, with no device-wide synchronisation (ONNX Runtime's CUDA provider
            # option; IOBinding binds the tensors in place).
            options["user_compute_stream"] = str(torch.cuda.current_stream().cuda_stream)
        return options

    def component(self, name: str) -> ComponentFn:
        session = self.session(name)
        # Feed each input in the dtype the graph declares (an fp16 graph may take fp16 inputs).
        types = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
        outputs = COMPONENTS[name].output_names

        if self.device.type == "cuda":
            return lambda inputs: run_bound(session, inputs, types, outputs, self.device)

        def run(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            feeds = {n: inputs[n].detach().cpu().numpy().astype(t, copy=False) for n, t in types.items()}
            results = session.run(outputs, feeds)
            return {n: torch.from_numpy(np.asarray(r, dtype=np.float32)) for n, r in zip(outputs, results)}

        return run

    def synchronize(self) -> None:
        pass  # session.run returns only when its outputs are ready

    def close(self) -> None:
        self._sessions.clear()


def run_bound(session, inputs: Mapping[str, torch.Tensor], types: Mapping[str, type], outputs: list[str],
              device: torch.device) -> dict[str, torch.Tensor]:
    """One session call with ONNX Runtime's IOBinding: each input bound in place from a torch
    tensor on ``device`` (cast to the graph's declared dtype there, ``types``: ``{name: numpy
    type}``), each output allocated by ONNX Runtime on ``device`` and handed to torch through
    DLPack. Returns float32 tensors on ``device``; no data passes through host memory unless
    ``device`` is the CPU."""
    binding = session.io_binding()
    kind, index = device.type, device.index or 0
    keep = []  # the bound tensors must outlive the run
    for name, np_type in types.items():
        tensor = inputs[name].detach().to(device, _TORCH_TYPES[np_type]).contiguous()
        keep.append(tensor)
        binding.bind_input(name, kind, index, np_type, tuple(tensor.shape), tensor.data_ptr())
    for name in outputs:
        binding.bind_output(name, kind, index)
    session.run_with_iobinding(binding)
    return {name: torch.from_dlpack(value).float() for name, value in zip(outputs, binding.get_outputs())}


def check_provider_loaded(provider: str, active: list[str], what: str) -> None:
    """Refuse a session that does not run on ``provider``: ONNX Runtime lists the providers it was
    built with (``get_available_providers``), not those that load (a missing CUDA or cuDNN library,
    a TensorRT version mismatch), and a session whose first provider fails to load falls back to
    the next one with a warning only. ``active`` is the session's ``get_providers()``.

    Raises:
        BackendUnavailableError: ``provider`` is not among ``active``.
    """
    if provider not in active:
        raise BackendUnavailableError(
            f"{what}: ONNX Runtime could not load {provider} and would run on {', '.join(active)} instead "
            "(a CUDA, cuDNN or TensorRT library it needs is missing or of another version); "
            "'svdtrt doctor' shows which providers load here")


def provider_loads(provider: str) -> str | None:
    """None when ONNX Runtime can run a session on ``provider`` here, else why not (one line).
    Creates a session for a one-node graph built in memory, as :class:`OnnxRuntimeBackend` does
    for a bundle graph, so what is reported is what loads, not what is compiled in."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if provider not in ort.get_available_providers():
        return f"this ONNX Runtime has no {provider} (it has {', '.join(ort.get_available_providers())})"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=[provider])
        check_provider_loaded(provider, session.get_providers(), provider)
    except Exception as e:  # ORT's own exception types, or ours
        from ...errors import first_line

        return first_line(e)[:300]
    return None


def session_options(precision: str, providers: list[str] | None = None, threads: int | None = None):
    """ONNX Runtime session options for a graph of ``precision`` on ``providers`` (default CPU).

    Args:
        threads: intra-op threads (None: ONNX Runtime's default).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if precision == "fp8" and (providers or ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]:
        # The CPU provider has no fp8 kernels: its optimizer would fuse Q/DQ into fp8 QGemm and
        # fail. Unfused, each QuantizeLinear/DequantizeLinear runs on its own and the float
        # ops between them run in fp32: simulated (fake) fp8 quantization with the graph's scales.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


def ort_tensorrt_cache(bundle) -> Path:
    """Where the ONNX Runtime TensorRT provider keeps its engines and timing caches for ``bundle``:
    a folder under the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``, ``svdtrt/ort-trt/``),
    keyed by the bundle's manifest, since nothing is written into a bundle outside a transaction."""
    import hashlib

    from ...bundle.manifest import dump

    key = hashlib.sha256(dump(bundle.manifest)).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "svdtrt" / "ort-trt" / key


def ort_tensorrt_options(bundle, component: str, precision: str) -> dict:
    """ONNX Runtime TensorRT execution-provider options for one component's session.

    The explicit optimization profile is the manifest's per-input min/opt/max (the same one
    ``svdtrt build --profile dynamic`` uses), in the provider's ``name:AxBxC,...`` format;
    engines and timing caches go to :func:`ort_tensorrt_cache`. The provider builds weakly
    typed networks, so fp16 and int8 (Q/DQ) graphs also need its fp16/int8 switches
    (ONNX Runtime's TensorRT execution provider documentation).
    """
    profile = bundle.manifest.components[component].profile
    cache = ort_tensorrt_cache(bundle)
    cache.mkdir(parents=True, exist_ok=True)
    options = {f"trt_profile_{key}_shapes": ",".join(f"{n}:{'x'.join(map(str, getattr(p, key)))}"
                                                    for n, p in profile.items())
               for key in ("min", "opt", "max")}
    return {**options, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8"}
