"""Q/DQ graphs (svdtrt/graphs/qdq.py): the exclusion patterns, and what a valid Q/DQ graph is."""

from __future__ import annotations

import onnx
import pytest
from onnx import numpy_helper

from svdtrt.errors import InputError, QuantizationError
from svdtrt.graphs.qdq import excluded_nodes, validate_qdq_graph


def test_exclusion_patterns_select_nodes_by_name(tiny_bundle):
    graph = onnx.load(tiny_bundle.graph_path("unet"), load_external_data=False).graph
    assert excluded_nodes(graph, [r"conv_in"]) == ["/unet/conv_in/Conv"]
    assert excluded_nodes(graph, [r"^/unet/conv_(in|out)/"]) == ["/unet/conv_in/Conv", "/unet/conv_out/Conv"]
    assert excluded_nodes(graph, []) == []
    attention = excluded_nodes(graph, [r"attn1/to_q"])
    assert attention and all("attn1/to_q" in n and n.endswith("MatMul") for n in attention)
    with pytest.raises(InputError, match="not a valid regular expression"):
        excluded_nodes(graph, ["conv_in("])


def _tamper(path, edit):
    model = onnx.load(path, load_external_data=False)
    edit(model)
    onnx.save(model, path)


def test_non_zero_zero_point_is_refused(int8_bundle, tmp_path):
    import shutil

    for name in ("unet.int8.onnx", "unet.int8.onnx.data"):
        shutil.copy(int8_bundle.path / name, tmp_path / name)
    path = tmp_path / "unet.int8.onnx"

    def shift(model):
        zp = next(t for t in model.graph.initializer if t.name.endswith("_zero_point") and not t.dims)
        zp.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(zp) + 3, zp.name))

    _tamper(path, shift)
    with pytest.raises(QuantizationError, match="non-zero zero point"):
        validate_qdq_graph(path)


def test_graph_without_qdq_is_refused(tiny_bundle):
    with pytest.raises(QuantizationError, match="no Q/DQ node"):
        validate_qdq_graph(tiny_bundle.graph_path("unet", "fp32"))


def test_fp8_weight_scales_are_per_tensor_and_int8_per_channel(tmp_path):
    """Second audit, defect 8: fp8 weights had per-channel scales, which TensorRT fuses into an fp8
    GEMM only from 10.6 and only on Hopper; elsewhere (TensorRT 10.3 to 10.5, Ada) such a MatMul
    ran as dequantize + fp16 GEMM. ModelOpt's and demoDiffusion's SVD fp8 recipes scale weights per
    tensor; int8 keeps per-channel scales (docs/tensorrt.md, "Second audit")."""
    import numpy as np
    from onnx import TensorProto, helper

    from svdtrt.graphs.files import save_graph
    from svdtrt.graphs.qdq import quantize_graph
    from svdtrt.precisions import PRECISIONS

    rng = np.random.default_rng(0)
    # large enough for ONNX Runtime's quantizer to write them as external data, as a bundle's weights
    conv = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32), "conv.weight")
    matmul = numpy_helper.from_array(rng.standard_normal((6, 256)).astype(np.float32), "matmul.weight")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 256])
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("MatMul", ["c", "matmul.weight"], ["y"], name="/matmul/MatMul")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [conv, matmul]),
                              opset_imports=[helper.make_opsetid("", 17)])
    save_graph(model, tmp_path, tmp_path / "g.onnx")

    def weight_scale_shapes(precision):
        samples = iter([{"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32)} for _ in range(4)])
        target = tmp_path / f"g.{precision}.onnx"
        quantize_graph(tmp_path / "g.onnx", target, samples, PRECISIONS[precision].quantizer, [])
        graph = onnx.load(target, load_external_data=False).graph
        inits = {t.name: t for t in graph.initializer}
        quantized_weights = {t.name for t in graph.initializer if t.data_type in (TensorProto.INT8,
                                                                                   TensorProto.FLOAT8E4M3FN)}
        return {n.input[0]: list(inits[n.input[1]].dims) for n in graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in quantized_weights and n.input[0] in inits}

    fp8 = weight_scale_shapes("fp8")
    assert len(fp8) == 2 and all(dims == [] for dims in fp8.values()), fp8  # one scale per weight tensor
    int8 = weight_scale_shapes("int8")
    assert sorted(int8.values()) == [[16], [256]], int8  # one per output channel
