"""fp16 graphs (svdtrt/graphs/fp16.py): the weight encoding."""

from __future__ import annotations

import numpy as np


def test_fp16_weight_encoding_matches_the_converters():
    from onnxruntime.transformers.float16 import convert_np_to_float16

    from svdtrt.graphs.fp16 import to_float16

    special = np.array([0, 1e-9, -1e-9, 1e5, -1e5, np.inf, -np.inf, np.nan, 1.2345, -3e-5], np.float32)
    a = np.concatenate([special, np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 1e3])
    assert np.array_equal(to_float16(a), convert_np_to_float16(a), equal_nan=True)
    assert to_float16(special)[3] == 65504 and to_float16(special)[1] > 0
