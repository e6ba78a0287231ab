"""Calibration samples of the block-caching graphs, derived from the UNet's recorded calls.

``svdtrt calibrate`` records the default loop, which calls ``unet`` only. The block-caching
graphs (docs/architecture.md, "Block caching") take the same inputs, so:

- ``unet_full`` is calibrated and measured on the UNet's recorded calls as they are;
- ``unet_shallow`` also takes ``deep_feature`` [B, F, K, hk, wk]: for each recorded call it is
  the deep feature the fp32 ``unet_full`` graph returns on that call's inputs (ONNX Runtime,
  CPU). That is exactly the feature the shallow graph is fed on a cached step right after a full
  step at that point of the trajectory; on later cached steps it sees the feature of an earlier
  step of the same trajectory, whose range the neighbouring steps' features span, since DeepCache
  rests on deep features changing little between neighbouring steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..graphs.sessions import open_session
from ..specs import COMPONENTS
from .recipe import CALIBRATED_FROM
from .shards import CalibrationSet

#: The input of ``unet_shallow`` that no recorded call holds, and the output of ``unet_full`` it comes from.
DEEP_FEATURE = "deep_feature"


def component_samples(calibration: CalibrationSet, component: str, split: str = "calibration",
                      full_graph: Path | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The calibration (or held-out) inputs of ``component``, one call's ``{input_name: float32
    array}`` at a time, in the component's spec order.

    For a recorded component, its checked shards; for a block-caching graph, the UNet's
    (:data:`~svdtrt.calibration.recipe.CALIBRATED_FROM`), with ``deep_feature`` [B, F, K, hk, wk]
    added for ``unet_shallow`` by running ``full_graph`` (the fp32 ``unet_full`` graph) on each
    call. The graph's session opens when the first sample is asked for.

    Args:
        calibration: the set.
        component: a quantized component, e.g. ``"unet_shallow"``.
        split: ``"calibration"`` or ``"held_out"``.
        full_graph: the fp32 ``unet_full`` graph; needed for ``unet_shallow`` only.
    Raises:
        QuantizationError: the set has no such samples, or a shard is corrupt or mismatched.
        ValueError: ``unet_shallow`` without ``full_graph``.
    """
    samples = calibration.samples(CALIBRATED_FROM[component], split)
    spec = COMPONENTS[component]
    if DEEP_FEATURE not in spec.input_names:
        yield from samples
        return
    if full_graph is None:
        raise ValueError(f"{component}'s {DEEP_FEATURE} is derived by the fp32 unet_full graph: pass full_graph")
    session = None
    for sample in samples:
        if session is None:  # a calibrate session: the full fp32 UNet's weights are not copied again
            session = open_session(full_graph, "calibrate")
        (deep,) = session.run([DEEP_FEATURE], sample)
        derived = {**sample, DEEP_FEATURE: np.asarray(deep, dtype=np.float32)}
        yield {n: derived[n] for n in spec.input_names}


def sample_count(calibration: CalibrationSet, component: str, split: str = "calibration") -> int:
    """How many samples :func:`component_samples` yields (one per recorded call)."""
    return len(calibration.files(CALIBRATED_FROM[component], split))
