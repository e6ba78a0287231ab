"""The ``onnxruntime`` backends: the bundle's graphs on ONNX Runtime's CPU, CUDA or TensorRT
execution provider."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ...errors import BackendUnavailableError
from ...specs import COMPONENTS
from .base import ComponentFn

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
            providers = [(p, ort_tensorrt_options(self.bundle, name, self.precision))
                         if p == "TensorrtExecutionProvider" else p for p in self.providers]
            try:
                self._sessions[name] = ort.InferenceSession(str(self.bundle.path / graph.file), options,
                                                            providers=providers)
            except Exception as e:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
                raise BundleError(f"ONNX Runtime cannot load {graph.file} of bundle '{self.bundle.path}' "
                                  f"({first_line(e)[:200]}); {self.bundle.remedy(graph.file)}") from None
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

    from ...manifest import dump

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
