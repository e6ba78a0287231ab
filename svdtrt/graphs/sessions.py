"""Every ONNX Runtime session of svdtrt is made here (:func:`open_session`), with the options of
its purpose (:data:`PURPOSES`), as Polygraphy's ``SessionFromOnnx`` and Model Optimizer's one
session factory do; and the checks that a session runs on the provider asked for
(docs/architecture.md, "Layout" and "GPU paths").

A purpose is what the session is for, and it decides how ONNX Runtime may spend memory on it:

- ``validate``: a graph run once or twice against a reference (export's validation, the fp32
  outputs an fp16 graph is held to);
- ``calibrate``: the fp32 ``unet_full`` graph run over a calibration set to derive
  ``unet_shallow``'s deep features;
- ``run``: a graph the sampling loop calls many times (the ``onnxruntime*`` backends, and the
  held-out evaluation of a quantized graph, measured as the backend will run it);
- ``probe``: a one-node graph that tells whether a provider loads (``svdtrt doctor``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import BackendUnavailableError, first_line
from ..precisions import precision as lookup_precision

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class Purpose:
    """The session options of one purpose.

    Attributes:
        prepacking: let ONNX Runtime pre-pack constant weights into its kernels' layout (faster
            calls; a second copy of every packed weight).
        cpu_arena: allocate through ONNX Runtime's CPU memory arena (faster allocation; memory the
            arena keeps and does not hand back).
    """

    prepacking: bool
    cpu_arena: bool


#: Session options per purpose. A session that is opened for a few calls skips pre-packing and the
#: arena, which would each hold another copy of a multi-GB graph's weights (the full-size fp32
#: UNet's are about 6 GB) for calls that gain little from them; sessions the loop calls every step
#: keep ONNX Runtime's defaults (both on).
PURPOSES: dict[str, Purpose] = {
    "validate": Purpose(prepacking=False, cpu_arena=False),
    "calibrate": Purpose(prepacking=False, cpu_arena=False),
    "run": Purpose(prepacking=True, cpu_arena=True),
    "probe": Purpose(prepacking=True, cpu_arena=True),
}

#: The numpy type of each ONNX Runtime tensor type a graph's float inputs may have
#: (``session.get_inputs()[i].type``).
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}

#: An ONNX Runtime provider, or a provider with its options, as ``InferenceSession`` takes them.
Provider = str | tuple[str, dict]


def session_options(purpose: str, precision: str | None = None, providers: Sequence[Provider] = (CPU,),
                    threads: int | None = None):
    """ONNX Runtime session options for a session of ``purpose`` (:data:`PURPOSES`).

    Args:
        purpose: ``"validate"``, ``"calibrate"``, ``"run"`` or ``"probe"``.
        precision: the graph's precision, where it matters: an fp8 graph on the CPU provider alone
            runs with graph optimizations off (simulated fp8: that provider has no fp8 kernels).
        providers: the session's providers, first choice first.
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
    Raises:
        KeyError: an unknown purpose (a bug in the caller).
    """
    import onnxruntime as ort

    kind = PURPOSES[purpose]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not kind.prepacking:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if not kind.cpu_arena:
        options.enable_cpu_mem_arena = False
    if precision == "fp8" and _names(providers) == [CPU]:
        # The CPU provider has no fp8 kernels: its optimizer would fuse Q/DQ into fp8 QGemm and
        # fail. Unfused, each QuantizeLinear/DequantizeLinear runs on its own and the float
        # ops between them run in fp32: simulated (fake) fp8 quantization with the graph's scales.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return options


def open_session(graph: Path | bytes, purpose: str, providers: Sequence[Provider] = (CPU,),
                 precision: str | None = None, threads: int | None = None):
    """An ONNX Runtime ``InferenceSession`` of ``graph`` with the options of ``purpose``
    (:func:`session_options`); the one place svdtrt creates a session.

    Args:
        graph: a graph file (its external data is read beside it) or a serialized graph.
        purpose, precision, threads: see :func:`session_options`.
        providers: execution providers, each a name or ``(name, provider options)``, first choice
            first; ONNX Runtime falls back to the next one with a warning only, so a caller that
            needs its first choice checks it with :func:`check_provider_loaded`.
    Raises:
        ImportError: ONNX Runtime is not installed.
        onnxruntime's own exception types: the graph cannot be loaded.
    """
    import onnxruntime as ort

    options = session_options(purpose, precision, providers, threads)
    start = time.perf_counter()
    session = ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                   providers=list(providers))
    log.info("%s session of %s on %s opened in %.1f s", purpose,
             "a graph in memory" if isinstance(graph, bytes) else Path(graph).name, ", ".join(session.get_providers()),
             time.perf_counter() - start)
    return session


def _names(providers: Sequence[Provider]) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def input_types(session) -> dict[str, type]:
    """``{input name: numpy type}`` of a session's inputs (:data:`ORT_TYPES`; float32 for a type
    not in it), the dtypes the graph declares, which its callers feed."""
    return {i.name: ORT_TYPES.get(i.type, np.float32) for i in session.get_inputs()}


def output_types(session) -> dict[str, type]:
    """``{output name: numpy type}`` of a session's outputs, as :func:`input_types`: the dtypes a
    caller allocates the outputs it binds in."""
    return {o.name: ORT_TYPES.get(o.type, np.float32) for o in session.get_outputs()}


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
    Creates a session for a one-node graph built in memory, as the ``onnxruntime*`` backends do
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
    try:
        session = open_session(model.SerializeToString(), "probe", [provider])
        check_provider_loaded(provider, session.get_providers(), provider)
    except Exception as e:  # ORT's own exception types, or ours
        return first_line(e)[:300]
    return None


def tensorrt_provider_options(profile: Mapping[str, Mapping[str, Sequence[int]]], cache: Path,
                              precision: str) -> dict:
    """ONNX Runtime TensorRT execution-provider options for one graph's session.

    Args:
        profile: the explicit optimization profile, ``{input: {"min": [...], "opt": [...],
            "max": [...]}}``; it becomes the provider's ``name:AxBxC,...`` shapes.
        cache: the folder for the provider's engines and timing caches (created).
        precision: the graph's precision. The provider builds weakly typed networks, in which a
            layer runs in fp16 only where the fp16 switch allows it, so every graph on an fp16
            base (fp16, and the int8 and fp8 Q/DQ graphs, docs/architecture.md, "Precisions")
            gets ``trt_fp16_enable``, and an int8 Q/DQ graph ``trt_int8_enable`` too (ONNX
            Runtime's TensorRT execution provider documentation; docs/tensorrt.md, "Second audit",
            defect 11).
    """
    cache.mkdir(parents=True, exist_ok=True)
    options = {f"trt_profile_{key}_shapes": ",".join(f"{n}:{'x'.join(map(str, shapes[key]))}"
                                                    for n, shapes in profile.items())
               for key in ("min", "opt", "max")}
    return {**options, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": lookup_precision(precision).float_dtype == "float16",
            "trt_int8_enable": precision == "int8"}
