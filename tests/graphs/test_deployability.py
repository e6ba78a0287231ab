"""Deployability (svdtrt/graphs/deployability.py): what TensorRT's parser would refuse."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from svdtrt.errors import ExportError
from svdtrt.graphs.deployability import check_deployable, deployability_problems


def _tiny_graph(op="Relu", domain="", unused=False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [4], np.ones(4, np.float32))] if unused else []
    node = helper.make_node(op, ["x"], ["y"], domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(helper.make_graph([node], "g", [x], [y], inits), opset_imports=opsets)


def test_deployability_flags_unsupported_ops_and_unused_initializers(tmp_path):
    ok = tmp_path / "ok.onnx"
    onnx.save(_tiny_graph(), ok)
    assert deployability_problems(ok) == []
    bad = tmp_path / "bad.onnx"
    onnx.save(_tiny_graph("Gelu", domain="com.microsoft", unused=True), bad)
    problems = deployability_problems(bad)
    assert any("com.microsoft.Gelu" in p for p in problems)
    assert any("1 unused initializers (e.g. w)" in p for p in problems)
    unsupported = tmp_path / "unique.onnx"
    onnx.save(_tiny_graph("Shrink"), unsupported)
    assert deployability_problems(unsupported) == []  # Shrink is in TensorRT's table
    onnx.save(_tiny_graph("Hardmax"), unsupported)
    assert deployability_problems(unsupported) == []
    model = _tiny_graph("Relu")
    model.graph.node[0].op_type = "Unique"  # in ONNX, not in TensorRT's parser
    onnx.save(model, unsupported)
    with pytest.raises(ExportError, match="not deployable with TensorRT: ops .*Unique"):
        check_deployable(unsupported)
