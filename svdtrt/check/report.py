"""What ``svdtrt check`` reports (:func:`svdtrt.check.compare.check_bundle`): typed, and written
as the JSON report (``--report``, the demo's ``report.json``) by :meth:`CheckReport.to_json`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Metrics of one output or one clip, as :mod:`svdtrt.media.metrics` computes them (cosine,
#: max/mean abs error, PSNR dB, SSIM; per frame for clips).
Metrics = dict


@dataclass
class EndToEnd:
    """The tested clip against its references.

    Attributes:
        reference: the references' precision (always ``"fp32"``).
        reference_clip: which clip the tested one is held to: ``"diffusers"``, or the PyTorch
            modules' clip through svdtrt's loop where diffusers has no counterpart (block
            caching, guidance truncation).
        vs_diffusers: the tested clip against that reference (:func:`svdtrt.media.metrics.clip_metrics`).
        torch_loop_vs_diffusers: svdtrt's loop over the PyTorch modules against the reference.
        identical_to_diffusers: the tested frames equal the reference's bit for bit.
        vs_fp32_graphs: for a quantized precision on ``onnxruntime``, the tested clip against the
            bundle's fp32 graphs' clip; None otherwise.
    """

    reference: str
    reference_clip: str
    vs_diffusers: Metrics
    torch_loop_vs_diffusers: Metrics
    identical_to_diffusers: bool
    vs_fp32_graphs: Metrics | None = None

    def to_json(self) -> dict:
        fp32 = {"vs_fp32_graphs": self.vs_fp32_graphs} if self.vs_fp32_graphs is not None else {}
        return {"reference": self.reference, "reference_clip": self.reference_clip, **fp32,
                "vs_diffusers": self.vs_diffusers, "torch_loop_vs_diffusers": self.torch_loop_vs_diffusers,
                "identical_to_diffusers": self.identical_to_diffusers}


@dataclass
class CheckReport:
    """The accuracy of one backend and precision over a bundle.

    Attributes:
        bundle: the bundle's path.
        backend, precision: what was checked.
        settings: the sampling settings of every clip (``dataclasses.asdict`` of them).
        components: ``{component: {output: Metrics}}``, worst over the recorded calls.
        end_to_end: the clips' comparison.
        timings: the tested clip's seconds per stage.
        check_seconds: wall time of the whole check, seconds.
        thresholds: the precision's limits (:mod:`svdtrt.precisions`).
        failures: each missed limit, one phrase each.
        qdq: for a quantized precision, each quantized graph's Q/DQ check
            (:func:`svdtrt.graphs.qdq.validate_qdq_graph`); None otherwise.
        tested_frames, reference_frames: float32 [F, H, W, 3] in [0, 1]: the tested clip and its
            reference (not in the JSON report).
    """

    bundle: str
    backend: str
    precision: str
    settings: dict
    components: dict[str, dict[str, Metrics]]
    end_to_end: EndToEnd
    timings: dict[str, float]
    check_seconds: float
    thresholds: dict[str, float]
    failures: list[str]
    qdq: dict | None = None
    tested_frames: np.ndarray | None = field(default=None, repr=False, compare=False)
    reference_frames: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        """The JSON report (the frames left out)."""
        return {
            "bundle": self.bundle, "backend": self.backend, "precision": self.precision, "settings": self.settings,
            "components": self.components, "end_to_end": self.end_to_end.to_json(), "timings": self.timings,
            "check_seconds": self.check_seconds, **({"qdq": self.qdq} if self.qdq else {}),
            "thresholds": self.thresholds, "failures": self.failures, "passed": self.passed,
        }
