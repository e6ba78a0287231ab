"""Deployability: will TensorRT's ONNX parser take this graph? Checked after every export.

The check reads the graph by path and without its weights (any size): onnx's checker, every
op in TensorRT's supported table, every tensor type one TensorRT supports, no unused
initializers, no dead nodes and no graph output that nothing produces.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from ..errors import ExportError
from .files import check_graph_file

#: ONNX operators (default domain) that TensorRT's ONNX parser supports: the "Y" rows of
#: onnx/onnx-tensorrt docs/operators.md at the ONNX-TensorRT 10.1 GA release (commit 96e7811,
#: "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20").
TENSORRT_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace", "DequantizeLinear", "Div",
    "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather",
    "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
    "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU", "HardSigmoid", "HardSwish",
    "Hardmax", "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool",
    "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg",
    "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu",
    "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
    "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence",
    "RNN", "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape",
    "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK",
    "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})
#: Highest opset of that table.
TENSORRT_MAX_OPSET = 20

#: Tensor types TensorRT supports, same source: "DOUBLE, FLOAT32, FLOAT16, BFLOAT16, INT32, INT64,
#: FP8, INT8, INT4, UINT8, and BOOL" (DOUBLE is cast down to FLOAT by the parser).
TENSORRT_DTYPES = frozenset({
    TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32,
    TensorProto.INT64, TensorProto.FLOAT8E4M3FN, TensorProto.INT8, TensorProto.INT4, TensorProto.UINT8,
    TensorProto.BOOL,
})


def deployability_problems(path: Path) -> list[str]:
    """Everything in the graph at ``path`` that TensorRT's parser would refuse or that is dead
    weight; an empty list means deployable. onnx's checker runs first, by path.

    Raises:
        ExportError: the graph fails onnx's checker.
    """
    check_graph_file(path)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset > TENSORRT_MAX_OPSET:
        problems.append(f"opset {opset} is above TensorRT's {TENSORRT_MAX_OPSET}")
    unsupported = sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in graph.node
                          if n.domain not in ("", "ai.onnx") or n.op_type not in TENSORRT_OPS})
    if unsupported:
        problems.append(f"ops TensorRT's parser does not support: {', '.join(unsupported)}")
    types = {t.name: t.data_type for t in graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)
                  if v.type.HasField("tensor_type")})
    bad_types = sorted({f"{name} ({TensorProto.DataType.Name(t)})" for name, t in types.items()
                        if t and t not in TENSORRT_DTYPES})
    if bad_types:
        problems.append(f"tensor types TensorRT does not support: {', '.join(bad_types[:5])}"
                        + (f" and {len(bad_types) - 5} more" if len(bad_types) > 5 else ""))
    consumed = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [t.name for t in graph.initializer if t.name not in consumed]
    if unused:
        problems.append(f"{len(unused)} unused initializers (e.g. {unused[0]})")
    dead = [n.name or n.op_type for n in graph.node if not any(o in consumed for o in n.output if o)]
    if dead:
        problems.append(f"{len(dead)} nodes whose outputs nothing uses (e.g. {dead[0]})")
    return problems


def check_deployable(path: Path) -> dict:
    """Run :func:`deployability_problems`; returns what the manifest records.

    Raises:
        ExportError: the graph is not deployable; the message lists why.
    """
    problems = deployability_problems(path)
    if problems:
        raise ExportError(f"{Path(path).name} is not deployable with TensorRT: {'; '.join(problems)}")
    return {"tensorrt_parser_ops": "onnx-tensorrt docs/operators.md (10.1 GA)", "problems": []}
