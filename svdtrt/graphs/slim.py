"""Graph clean-up by onnxslim: constant folding, dead-node and unused-initializer removal.

onnxslim works on the graph structure with its large weights (MatMul/Gemm/Conv weights) left
as references into their data files, so cleaning a 6 GB UNet never loads its weights; the
rewrites that would read or rewrite such weights (Conv+Add, Gemm+Mul, ... fusions) are skipped. The cleaned graph is validated
against PyTorch afterwards like any other (see :mod:`svdtrt.export.validation`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ..errors import ExportError, first_line
from .files import read_tensor_array

log = logging.getLogger(__name__)

#: onnxslim's fusions that fold one op into a neighbour's weights (Conv+Add, Gemm+Mul, ...) would
#: read and rewrite large weights in memory; TensorRT makes those fusions itself when it builds.
_SKIPPED_FUSIONS = ["FusionConvAdd", "FusionConvTransposeAdd", "FusionConvBN", "FusionConvTransposeBN",
                    "FusionConvMul", "FusionConvTransposeMul", "FusionGemm", "FusionGemmMul", "FusionGemmAdd",
                    "FusionPadConv"]


#: (op type, input index) of the weights onnxslim's remaining rewrites never read.
_WEIGHT_INPUTS = {("MatMul", 1), ("Gemm", 1), ("Conv", 1), ("ConvTranspose", 1)}


def _inline_non_weights(model: onnx.ModelProto, base_dir: Path) -> None:
    """Read into the graph every external initializer that is not a MatMul/Gemm/Conv weight
    (biases, norms, embeddings added to activations: a few MB at SVD scale). onnxslim reads those
    values (e.g. to drop an Add of zeros) and cannot open external data itself without a base
    directory; the large weights stay on disk."""
    weights = {n.input[i] for n in model.graph.node for op, i in _WEIGHT_INPUTS
               if n.op_type == op and len(n.input) > i}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name not in weights:
            raw = read_tensor_array(tensor, base_dir).tobytes()
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = raw


def slim_graph(model: onnx.ModelProto, base_dir: Path) -> onnx.ModelProto:
    """Clean ``model`` (weightless or not) with onnxslim; external data is read from ``base_dir``.

    Returns the cleaned graph; inputs, outputs and their dynamic axes are unchanged.

    Raises:
        ExportError: onnxslim failed.
    """
    import onnxslim

    nodes = len(model.graph.node)
    _inline_non_weights(model, base_dir)
    try:
        slimmed = onnxslim.slim(model, skip_fusion_patterns=_SKIPPED_FUSIONS)
    except Exception as e:  # onnxslim raises many unrelated types; keep the cause chained
        raise ExportError(f"onnxslim could not clean the graph: {first_line(e)}") from e
    if slimmed is None:
        raise ExportError("onnxslim could not clean the graph (it returned nothing)")
    log.info("onnxslim: %d -> %d nodes", nodes, len(slimmed.graph.node))
    return slimmed
