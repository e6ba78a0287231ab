"""fp16 graphs: an ONNX-level conversion of the validated fp32 graph (docs/architecture.md,
"Precisions"), by ONNX Runtime's float16 converter (``onnxruntime.transformers.float16``,
part of the onnxruntime wheel: no extra dependency and no torch).

The conversion runs on the weightless graph structure; the converter only retypes external
initializers, and their bytes are then re-encoded one tensor at a time while streaming into the
new data file (:func:`svdtrt.graphs.files.save_graph`), clamped to the fp16 range as
the converter does (:func:`to_float16`). Graph inputs and outputs stay float32
(``keep_io_types``): the runtime feeds and reads every precision alike.
"""

from __future__ import annotations

import logging
import tempfile
import types
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from .files import check_graph_file, infer_shapes_file, save_graph

log = logging.getLogger(__name__)

#: Ops whose arguments must stay float32, with the ops that compute those arguments: the
#: sinusoidal embeddings of ``timestep`` and ``added_time_ids``. diffusers computes them in
#: float32 even in an fp16 pipeline (``get_timestep_embedding``); in fp16 the argument of
#: sin(127 * freq) (motion bucket 127) is only resolved to 0.06 rad.
KEEP_FP32_WITH_INPUTS = ("Sin", "Cos")

#: Normalisations, computed in fp32 in every fp16-based graph (fp16 and the Q/DQ graphs): the
#: converter casts their inputs to fp32 and their outputs back. In a strongly typed TensorRT
#: network a normalisation computes in its input's type (TensorRT 10.3's ``NvInfer.h``:
#: ``INormalizationLayer::setComputePrecision`` is rejected in strongly typed networks, "the
#: compute precision is typically controlled by casting the input tensors"; 11.x has no other
#: control), so fp16 inputs would reduce over up to h x w x F values in fp16; ONNX Runtime's CPU
#: provider computes them in fp32 and could not measure that error. With the casts in the graph,
#: TensorRT and ONNX Runtime compute the same thing, and ``check`` measures what the engine runs
#: (docs/tensorrt.md, "Second audit", defect 9).
KEEP_FP32_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")


def convert_to_fp16(src: Path, dst: Path, op_block_list: Iterable[str] = (), min_opset: int | None = None) -> dict:
    """Convert the float32 graph at ``src`` to float16 at ``dst`` (+ ``dst.data``).

    Also converts Q/DQ graphs: their float scales become fp16, so every ``DequantizeLinear``
    outputs fp16 (ONNX: a DequantizeLinear's output type is its scale's type) and every
    ``QuantizeLinear`` reads fp16; the integer weights are left as they are.

    Args:
        src: a float32 graph whose external data lies beside it.
        dst: the fp16 graph to write.
        op_block_list: op types kept in float32, in addition to the converter's default block
            list, the normalisations (:data:`KEEP_FP32_OPS`) and the time embeddings
            (:data:`KEEP_FP32_WITH_INPUTS`).
        min_opset: first raise the graph's default-domain opset to at least this, with onnx's
            version converter (Q/DQ graphs need 19: QuantizeLinear and DequantizeLinear take
            fp16 scales from opset 19 on).
    Returns:
        What the manifest records: ``{"io_dtype": "float32", "converter": ..., "fp32_ops": [...],
        "fp32_nodes": N}``.
    Raises:
        ExportError: writing (e.g. ENOSPC) or onnx's checker failed.
    """
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".fp16-") as tmp:
        inferred = Path(tmp) / "inferred.onnx"
        infer_shapes_file(src, inferred)  # by path: the converter needs value types, and the graph may be >2 GB
        model = onnx.load(str(inferred), load_external_data=False)
    if min_opset is not None and _default_opset(model) < min_opset:
        from onnx import version_converter

        model = version_converter.convert_version(model, min_opset)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for i, node in enumerate(model.graph.node):  # the block list names nodes
        node.name = node.name or f"{node.op_type}_{i}"
    blocked_nodes = _time_embedding_nodes(model.graph)
    blocked_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(KEEP_FP32_OPS) | set(op_block_list))
    model = _weightless_converter()(
        model, keep_io_types=True, disable_shape_infer=True,
        op_block_list=blocked_ops, node_block_list=blocked_nodes)
    _drop_duplicate_casts(model.graph)
    # The converter appends its Cast nodes at the end; onnx requires topological order.
    OnnxModel(model).topological_sort()
    retyped = {t.name for t in model.graph.initializer
               if t.data_location == TensorProto.EXTERNAL and types.get(t.name) == TensorProto.FLOAT
               and t.data_type == TensorProto.FLOAT16}
    save_graph(model, src.parent, dst,
               transforms={n: lambda _, a: to_float16(a) for n in retyped},
               original_types={n: TensorProto.FLOAT for n in retyped})
    check_graph_file(dst)
    present = {n.op_type for n in model.graph.node}
    fp32_ops = sorted((set(blocked_ops) & present) | set(KEEP_FP32_WITH_INPUTS) & present)
    log.info("fp16: %d initializers converted, kept fp32: ops %s and %d time-embedding nodes",
             len(retyped), fp32_ops, len(blocked_nodes))
    return {"io_dtype": "float32", "converter": "onnxruntime.transformers.float16",
            "fp32_ops": fp32_ops, "fp32_nodes": len(blocked_nodes)}


#: fp16's largest finite value and smallest positive (subnormal) value.
FP16_MAX, FP16_MIN_POSITIVE = 65504.0, 5.96e-08


def to_float16(array: np.ndarray) -> np.ndarray:
    """float32 -> float16 with the semantics of the converter's ``convert_np_to_float16``: finite
    values beyond fp16's range clamp to +-65504 and nonzero values below its smallest subnormal
    to +-5.96e-8 (so no weight turns into inf or 0); NaN, inf and 0 are unchanged. The
    converter's own function makes a dozen masked copies per tensor for its debug log, about
    5 minutes for SVD's UNet; this one makes two passes."""
    with np.errstate(over="ignore"):  # overflowing values are clamped just below
        out = array.astype(np.float16)
    magnitude = np.abs(array)
    big = np.isfinite(array) & (magnitude > FP16_MAX)
    tiny = (magnitude < FP16_MIN_POSITIVE) & (array != 0)
    if big.any() or tiny.any():
        out[big] = np.copysign(FP16_MAX, array[big])
        out[tiny] = np.copysign(FP16_MIN_POSITIVE, array[tiny])
    return out


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _drop_duplicate_casts(graph: onnx.GraphProto) -> None:
    """The converter inserts one identical Cast per blocked consumer of an fp16 tensor, all with
    the same output name (not SSA); keep the first of each."""
    seen, keep = set(), []
    for node in graph.node:
        key = node.SerializeToString() if node.op_type == "Cast" else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        keep.append(node)
    if len(keep) < len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _value_info_from_dims(tensor: TensorProto):
    return helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def _weightless_converter():
    """ONNX Runtime's ``float16.convert_float_to_float16``, as a copy of the function whose module
    globals name :func:`_value_info_from_dims` as ``make_value_info_from_tensor``.

    The converter makes a value_info from each retyped initializer through
    ``numpy_helper.to_array``, which would load the graph's external data (gigabytes, and from the
    wrong folder); the shape is all it needs, and the dims have it. A copy, not a patch of the
    ``float16`` module: the module stays as it is for every other caller, in every thread, while a
    conversion runs.
    """
    from onnxruntime.transformers import float16

    convert = float16.convert_float_to_float16
    scope = {**vars(float16), "make_value_info_from_tensor": _value_info_from_dims}
    copy = types.FunctionType(convert.__code__, scope, convert.__name__, convert.__defaults__, convert.__closure__)
    copy.__kwdefaults__ = convert.__kwdefaults__
    return copy


def _time_embedding_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the Sin/Cos nodes and of every node upstream of them up to graph inputs or Shape
    nodes: the small subgraphs from ``timestep`` / ``added_time_ids`` / a frame-index ``Range``
    to the sinusoidal embeddings."""
    producer = {out: node for node in graph.node for out in node.output}
    todo = [n for n in graph.node if n.op_type in KEEP_FP32_WITH_INPUTS]
    seen: dict[str, onnx.NodeProto] = {}
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen[node.name] = node
        if node.op_type not in ("Shape", "Size"):  # their outputs do not depend on values upstream
            todo.extend(producer[i] for i in node.input if i in producer)
    return sorted(seen)


#: The ops that do a graph's arithmetic (what "computes in fp16" is counted over): matmuls and
#: convolutions, elementwise arithmetic, normalisations, softmax and activations.
ARITHMETIC_OPS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Softmax",
    "InstanceNormalization", "LayerNormalization", "GroupNormalization", "BatchNormalization", "ReduceMean",
    "Sigmoid", "Tanh", "Relu", "Erf", "Gelu", "Sin", "Cos",
})
_FLOAT_TYPES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
                TensorProto.DOUBLE: "fp64"}


def arithmetic_precision(path: Path) -> dict:
    """How the float arithmetic of the graph at ``path`` is typed: what TensorRT's strongly typed
    build computes it in (each op in its output tensors' type, docs/quantization.md).

    Counts the :data:`ARITHMETIC_OPS` nodes whose first output is a float tensor (shape
    arithmetic on int64 is left out), by that output's type after onnx shape inference.
    Returns:
        ``{"fp16": n, "fp32": n, ..., "fp16_share": fraction of the counted nodes in fp16,
        "fp32_nodes": names of the counted nodes not in fp16}``.
    """
    from collections import Counter

    with tempfile.TemporaryDirectory(prefix=".svdtrt-types-") as tmp:
        inferred = Path(tmp) / "inferred.onnx"
        infer_shapes_file(path, inferred)
        graph = onnx.load(str(inferred), load_external_data=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output, *graph.input]}
    counts, other = Counter(), []
    for node in graph.node:
        kind = _FLOAT_TYPES.get(types.get(node.output[0])) if node.op_type in ARITHMETIC_OPS else None
        if kind is None:
            continue
        counts[kind] += 1
        if kind != "fp16":
            other.append(node.name)
    total = sum(counts.values())
    return {**counts, "fp16_share": round(counts["fp16"] / total, 4) if total else 0.0, "fp32_nodes": other}
