"""fp16 graphs (svdtrt/graphs/fp16.py): the weight encoding, and what stays fp32."""

from __future__ import annotations

import numpy as np
import pytest


def test_fp16_weight_encoding_matches_the_converters():
    from onnxruntime.transformers.float16 import convert_np_to_float16

    from svdtrt.graphs.fp16 import to_float16

    special = np.array([0, 1e-9, -1e-9, 1e5, -1e5, np.inf, -np.inf, np.nan, 1.2345, -3e-5], np.float32)
    a = np.concatenate([special, np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 1e3])
    assert np.array_equal(to_float16(a), convert_np_to_float16(a), equal_nan=True)
    assert to_float16(special)[3] == 65504 and to_float16(special)[1] > 0


#: The ONNX normalisations (GroupNorm exports as InstanceNormalization).
NORMALISATIONS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")


@pytest.mark.slow
def test_normalisations_compute_in_fp32_in_fp16_graphs(tiny_bundle, tmp_path):
    """Second audit, defect 9: in a strongly typed TensorRT network a normalisation computes in
    its input's type, and the fp16 graphs fed InstanceNormalization and LayerNormalization fp16,
    while ONNX Runtime's CPU provider, which measures accuracy here, computes them in fp32. Their
    inputs are now cast to fp32 in the graph, so both compute the same, and the CPU still runs it."""
    import onnx

    from svdtrt.graphs.files import infer_shapes_file
    from svdtrt.graphs.fp16 import convert_to_fp16
    from svdtrt.graphs.sessions import open_session
    from svdtrt.models.modules import example_inputs
    from svdtrt.specs import COMPONENTS

    source, target = tiny_bundle.graph_path("unet", "fp32"), tmp_path / "unet.fp16.onnx"
    info = convert_to_fp16(source, target)
    assert {"InstanceNormalization", "LayerNormalization"} <= set(info["fp32_ops"]), info["fp32_ops"]
    infer_shapes_file(target, tmp_path / "inferred.onnx")
    graph = onnx.load(tmp_path / "inferred.onnx", load_external_data=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]}
    types.update({t.name: t.data_type for t in graph.initializer})
    norms = [n for n in graph.node if n.op_type in NORMALISATIONS]
    assert {n.op_type for n in norms} == {"InstanceNormalization", "LayerNormalization"}
    assert {types[i] for n in norms for i in n.input if i} == {onnx.TensorProto.FLOAT}
    assert {types[n.output[0]] for n in norms} == {onnx.TensorProto.FLOAT}
    feeds = {k: v.numpy() for k, v in example_inputs(COMPONENTS["unet"], tiny_bundle.dims.sizes(2, 4, 64, 64)).items()}
    (half,) = open_session(target, "validate").run(None, feeds)
    (full,) = open_session(source, "validate").run(None, feeds)
    cosine = float((half * full).sum() / np.linalg.norm(half) / np.linalg.norm(full))
    assert cosine > 0.9999, cosine
