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
