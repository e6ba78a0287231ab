"""Backends: each turns a component into a callable from named input tensors to named output
tensors, so the sampling loop never knows which one it drives (DESIGN.md, "The runtime").

- ``torch``: the reference, the source model's PyTorch modules.
- ``onnxruntime``: the bundle's graphs on ONNX Runtime's CPU provider; ``onnxruntime-cuda`` and
  ``onnxruntime-trt`` put them on its CUDA or TensorRT execution provider where onnxruntime-gpu
  is installed.
- ``tensorrt``: the bundle's TensorRT engines (:mod:`svdtrt.runtime.tensorrt_backend`).
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

import numpy as np
import torch

from ..errors import BackendUnavailableError, InputError
from ..specs import COMPONENTS

#: A component as the loop sees it: named input tensors -> named output tensors.
ComponentFn = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


class Backend(Protocol):
    name: str
    device: torch.device

    def component(self, name: str) -> ComponentFn:
        """The callable for component ``name`` (one of :data:`svdtrt.specs.COMPONENTS`)."""

    def synchronize(self) -> None:
        """Wait for queued device work, so that wall-clock stage timings are true."""


class TorchBackend:
    """The source model's PyTorch modules, on ``device`` in ``dtype``.

    Args:
        model: an :class:`svdtrt.models.SvdModel`.
        device: ``"cpu"`` or ``"cuda"``; inputs are moved there, outputs come back there.
        dtype: ``torch.float32`` (reference) or ``torch.float16`` (GPU).
    """

    name = "torch"

    def __init__(self, model, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        import copy
        import dataclasses

        from ..components import torch_modules

        self.device, self.dtype = torch.device(device), dtype
        if (self.device.type, dtype) != ("cpu", torch.float32):
            # Module.to() converts in place: work on a copy so that the caller's model (often the
            # fp32 CPU reference of the same run) stays as it was.
            model = dataclasses.replace(model, image_encoder=copy.deepcopy(model.image_encoder),
                                        vae=copy.deepcopy(model.vae), unet=copy.deepcopy(model.unet))
        self._modules = {k: m.to(self.device, dtype) for k, m in torch_modules(model).items()}

    def component(self, name: str) -> ComponentFn:
        module, spec = self._modules[name], COMPONENTS[name]

        @torch.no_grad()
        def run(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            args = [inputs[n].to(self.device, self.dtype) for n in spec.input_names]
            return {spec.output_names[0]: module(*args).float()}

        return run

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntimeBackend:
    """The bundle's graphs of one precision on ONNX Runtime; sessions are created on first use.

    Args:
        bundle: an opened :class:`svdtrt.bundle.Bundle`.
        precision: which graphs to run (``"fp32"``, ``"fp16"``, ``"int8"``, ``"fp8"``; fp8 on the CPU
            provider is simulated quantization, see :meth:`session`).
        providers: ONNX Runtime execution providers, first choice first; default CPU. With
            ``TensorrtExecutionProvider``, each session gets :func:`ort_tensorrt_options`.
        name: the backend name reported (``onnxruntime``, ``onnxruntime-cuda``, ``onnxruntime-trt``).
        threads: intra-op threads of each session; None keeps ONNX Runtime's default (one per
            physical core). On a CPU shared with other processes, fewer threads than cores is
            faster: a thread pool stalls whenever one of its threads is descheduled.
    Raises:
        BackendUnavailableError: a requested provider is not in this ONNX Runtime build.
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
                "install onnxruntime-gpu in place of onnxruntime ('pip uninstall onnxruntime && "
                "pip install onnxruntime-gpu') on a machine with CUDA")
        self.device = torch.device("cpu")
        self._sessions = {}

    def session(self, name: str):
        """The ONNX Runtime session of component ``name`` (created once)."""
        if name not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            if self.precision == "fp8" and self.providers == ["CPUExecutionProvider"]:
                # The CPU provider has no fp8 kernels: its optimizer would fuse Q/DQ into fp8 QGemm and
                # fail. Unfused, each QuantizeLinear/DequantizeLinear runs on its own and the float
                # ops between them run in fp32: simulated (fake) fp8 quantization with the graph's scales.
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if self.threads:
                options.intra_op_num_threads = self.threads
            path = self.bundle.graph_path(name, self.precision)
            providers = [(p, ort_tensorrt_options(self.bundle, name, self.precision))
                         if p == "TensorrtExecutionProvider" else p for p in self.providers]
            self._sessions[name] = ort.InferenceSession(str(path), options, providers=providers)
        return self._sessions[name]

    def component(self, name: str) -> ComponentFn:
        session = self.session(name)
        # Feed each input in the dtype the graph declares (an fp16 graph may take fp16 inputs).
        types = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
        outputs = COMPONENTS[name].output_names

        def run(inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            feeds = {n: inputs[n].detach().cpu().numpy().astype(t, copy=False) for n, t in types.items()}
            results = session.run(outputs, feeds)
            return {n: torch.from_numpy(np.asarray(r, dtype=np.float32)) for n, r in zip(outputs, results)}

        return run

    def synchronize(self) -> None:
        pass  # session.run returns only when its outputs are ready


def ort_tensorrt_options(bundle, component: str, precision: str) -> dict:
    """ONNX Runtime TensorRT execution-provider options for one component's session.

    The explicit optimization profile is the manifest's per-input min/opt/max (the same one
    ``svdtrt build --profile dynamic`` uses), in the provider's ``name:AxBxC,...`` format;
    engines and timing caches go to ``BUNDLE/engines/onnxruntime-trt/``. The provider builds
    weakly typed networks, so fp16 and int8 (Q/DQ) graphs also need its fp16/int8 switches
    (onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html).
    """
    profile = bundle.manifest["components"][component]["profile"]
    cache = bundle.path / "engines" / "onnxruntime-trt"
    cache.mkdir(parents=True, exist_ok=True)
    options = {f"trt_profile_{key}_shapes": ",".join(f"{n}:{'x'.join(map(str, p[key]))}" for n, p in profile.items())
               for key in ("min", "opt", "max")}
    return {**options, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8"}


class Recorder:
    """Wraps a backend and keeps a copy of every call's inputs and outputs, per component.

    Used by ``svdtrt check`` (component inputs from a real sampling run) and by calibration.

    Attributes:
        calls: ``{component: [(inputs, outputs), ...]}`` with CPU tensors, in call order.
    """

    def __init__(self, backend: Backend, components: tuple[str, ...] = tuple(COMPONENTS)):
        self.backend, self.components = backend, components
        self.name, self.device = backend.name, backend.device
        self.calls: dict[str, list] = {c: [] for c in components}

    def component(self, name: str) -> ComponentFn:
        fn = self.backend.component(name)
        if name not in self.components:
            return fn

        def run(inputs):
            outputs = fn(inputs)
            self.calls[name].append(({k: v.detach().cpu().clone() for k, v in inputs.items()},
                                     {k: v.detach().cpu().clone() for k, v in outputs.items()}))
            return outputs

        return run

    def synchronize(self) -> None:
        self.backend.synchronize()


#: ONNX Runtime execution providers of each ``onnxruntime*`` backend, first choice first.
ORT_PROVIDERS = {
    "onnxruntime": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
BACKENDS = ("torch", *ORT_PROVIDERS, "tensorrt")


def create_backend(name: str, bundle, precision: str = "fp32", model=None, device: str = "cpu",
                   cuda_graph: bool = False, one_engine_at_a_time: bool = False,
                   threads: int | None = None) -> Backend:
    """Create backend ``name`` for ``bundle``.

    Args:
        name: one of :data:`BACKENDS`.
        bundle: the opened bundle.
        precision: graph or engine precision (``onnxruntime*``, ``tensorrt``) or ``fp32``/``fp16``
            module dtype (``torch``).
        model: the source :class:`SvdModel` for ``torch``; loaded from the bundle's manifest if None.
        device: ``cpu`` or ``cuda`` for ``torch``.
        cuda_graph: ``tensorrt`` only: replay a static-profile UNet engine from a CUDA graph.
        one_engine_at_a_time: ``tensorrt`` only: keep only the engine in use loaded.
        threads: intra-op threads of ``onnxruntime`` sessions (None: its default). PyTorch's are
            process-wide: set them with ``torch.set_num_threads``.
    Raises:
        InputError: unknown backend name.
        BackendUnavailableError: the backend needs a package or GPU this machine lacks.
    """
    if name == "torch" and device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"the torch backend on cuda needs a CUDA GPU and a CUDA build of torch "
                                      f"(torch {torch.__version__} sees none); use --device cpu")
    if name == "torch":
        from ..models import load_model

        model = model or load_model(source_reference(bundle))
        dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(precision)
        if dtype is None:
            raise InputError(f"the torch backend runs fp32 or fp16, not {precision}")
        return TorchBackend(model, device, dtype)
    if name in ORT_PROVIDERS:
        return OnnxRuntimeBackend(bundle, precision, ORT_PROVIDERS[name], name=name, threads=threads)
    if name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(bundle, precision, cuda_graph=cuda_graph, one_engine_at_a_time=one_engine_at_a_time)
    raise InputError(f"unknown backend '{name}': choose from {', '.join(BACKENDS)}")


def reference_model(bundle, model=None):
    """The bundle's source :class:`SvdModel` (``model`` if given, else rebuilt from the manifest).

    Raises:
        BundleError: the model's configs differ from those the bundle was exported from.
    """
    from ..errors import BundleError
    from ..models import load_model

    model = model or load_model(source_reference(bundle))
    if model.config_hashes() != bundle.manifest["config_hashes"]:
        raise BundleError(f"the model given is not the one bundle '{bundle.path}' was exported from "
                          "(config hashes differ); pass the source model with --model")
    return model


def source_reference(bundle) -> str:
    """The ``MODEL`` argument that rebuilds a bundle's source model (preset name, directory or hub id)."""
    return bundle.manifest["source"]["name"]
