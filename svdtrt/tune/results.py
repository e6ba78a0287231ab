"""A tune's results, typed (what :func:`svdtrt.tune.search.run_tune` returns, :mod:`.report` writes
and :mod:`.profiles` stores): each candidate's measurements, the Pareto front, and the answer per
floor; ``results.json`` is :meth:`TuneResults.to_json` (schema :data:`RESULT_SCHEMA`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..bundle.manifest import ProfileSettings
from ..runtime.measure import Machine
from ..runtime.settings import SamplingSettings
from .folder import ImageResult
from .space import Floor, clip_fields

RESULT_SCHEMA = "svdtrt-tune/1"

#: An image as the results key it: (sha256 of its pixels, seed).
ImageKey = tuple[str, int]

#: Why a candidate was measured no further (its ``status``).
COMPLETE = "complete"
FAILS_EVERY_FLOOR = "first pass: below every floor"
SLOWER_THAN_ANSWERS = "first pass: slower than the answer of every floor it meets"
PREDICTED_SLOWER = "not measured: predicted slower than every floor's answer"
OVER_BUDGET = "not measured: time budget spent"
FIRST_PASS_OVER_BUDGET = "first pass: time budget spent"


@dataclass(frozen=True)
class TuneImage:
    """A tuning or held-out image: its name (file name or sample photo), sha256 of its pixels
    (:func:`svdtrt.media.images.image_sha256`) and the seed its clips use."""

    name: str
    sha256: str
    seed: int

    @property
    def key(self) -> ImageKey:
        return self.sha256, self.seed


@dataclass
class CandidateResult:
    """One candidate and what was measured of it.

    Attributes:
        candidate: its settings.
        unet_flops: UNet FLOPs per clip (counted, :mod:`svdtrt.models.flops`).
        predicted_seconds: seconds per clip the cost model predicted when it was taken up (None if
            never taken up).
        tuning, held_out: its clips on the tuning and held-out images, by image key.
        status: how far it was measured (the constants above).
        peak_rss_bytes: peak resident memory while its clips were made (this run or the one that
            made them); None where unknown.
    """

    candidate: ProfileSettings
    unet_flops: int
    predicted_seconds: float | None = None
    tuning: dict[ImageKey, ImageResult] = field(default_factory=dict)
    held_out: dict[ImageKey, ImageResult] = field(default_factory=dict)
    status: str = "not measured"
    peak_rss_bytes: int | None = None

    @property
    def label(self) -> str:
        return self.candidate.describe()

    def clips(self, images: list[TuneImage], held_out: bool = False) -> list[ImageResult]:
        """Its clips on ``images`` that were measured, in their order."""
        found = self.held_out if held_out else self.tuning
        return [found[i.key] for i in images if i.key in found]

    def complete(self, images: list[TuneImage]) -> bool:
        return all(i.key in self.tuning for i in images)

    def seconds(self, images: list[TuneImage]) -> float | None:
        """Median seconds per clip over its clips on ``images``; None before any."""
        clips = self.clips(images)
        return float(np.median([c.seconds for c in clips])) if clips else None

    def quality(self, images: list[TuneImage], held_out: bool = False) -> tuple[float, float] | None:
        """(worst-frame PSNR in dB, worst-frame SSIM) over its clips on ``images``; None before any."""
        clips = self.clips(images, held_out)
        return (min(c.min_psnr_db for c in clips), min(c.min_ssim for c in clips)) if clips else None

    def dominates(self, other: CandidateResult, images: list[TuneImage]) -> bool:
        """Whether, by counted work, this candidate is better than ``other`` of its precision: no
        more UNet FLOPs per clip and at least as close to the reference on ``images`` (PSNR and
        SSIM), better in one of them. Both must have clips on ``images``."""
        if self.candidate.precision != other.candidate.precision:
            return False
        (psnr, ssim), (other_psnr, other_ssim) = self.quality(images), other.quality(images)
        no_worse = self.unet_flops <= other.unet_flops and psnr >= other_psnr and ssim >= other_ssim
        return no_worse and (self.unet_flops, psnr, ssim) != (other.unet_flops, other_psnr, other_ssim)


@dataclass(frozen=True)
class Recommendation:
    """The fastest candidate measured on every tuning image that meets ``floor``."""

    floor: Floor
    result: CandidateResult


@dataclass(frozen=True)
class RunLoad:
    """One run that made records the results use, and the machine's 1-minute load averages when
    its records were written (lowest, highest)."""

    run: str
    records: int
    load_min: float | None
    load_max: float | None


@dataclass
class TuneResults:
    """A whole tune.

    Attributes:
        created, command: when, and the command line (None for an API call).
        machine: this run's machine, with the load at its start and end.
        runs: every run whose records the results use.
        bundle_path, source: the bundle's path and its source model's name.
        backend: the backend every candidate ran on.
        base: the clip's settings (size, seed of the first image, conditioning; its work fields
            are the reference's).
        images, held_out_images: the tuning images (the first is the first pass's) and the check
            images.
        floors: fast, balanced, exact.
        reference: the full-compute fp32 candidate's result.
        candidates: every candidate of the space, in the order they were taken up (then the rest).
        recommendations: one per floor.
        stopped_by_budget: the time budget ended the search (the answers are the best so far).
        clips_made, clips_reused: clips made by this run, and taken from the journal.
        seconds: this run's wall time.
    """

    created: str
    command: str | None
    machine: Machine
    runs: list[RunLoad]
    bundle_path: str
    source: str
    backend: str
    base: SamplingSettings
    images: list[TuneImage]
    held_out_images: list[TuneImage]
    floors: list[Floor]
    reference: CandidateResult
    candidates: list[CandidateResult]
    recommendations: list[Recommendation]
    stopped_by_budget: bool = False
    clips_made: int = 0
    clips_reused: int = 0
    seconds: float = 0.0

    def complete(self) -> list[CandidateResult]:
        """The candidates measured on every tuning image."""
        return [r for r in self.candidates if r.complete(self.images)]

    def front(self) -> list[CandidateResult]:
        """The Pareto front of the complete candidates, fastest first: those no other is at least as
        fast and at least as close to the reference as (in worst-frame PSNR), better in one."""
        done = sorted(self.complete(), key=lambda r: (r.seconds(self.images), -r.quality(self.images)[0]))
        front, best = [], -np.inf
        for r in done:
            psnr = r.quality(self.images)[0]
            if psnr > best:
                front.append(r)
                best = psnr
        return front

    def recommendation(self, floor: str) -> CandidateResult:
        return next(r.result for r in self.recommendations if r.floor.name == floor)

    def to_json(self) -> dict:
        """``results.json``."""
        def candidate(r: CandidateResult) -> dict:
            q, held = r.quality(self.images), r.quality(self.held_out_images, held_out=True)
            return {"settings": r.candidate.model_dump(mode="json"), "status": r.status, "unet_flops": r.unet_flops,
                    "predicted_seconds": r.predicted_seconds, "seconds_per_clip": r.seconds(self.images),
                    "min_psnr_db": q and q[0], "min_ssim": q and q[1], "held_out_min_psnr_db": held and held[0],
                    "held_out_min_ssim": held and held[1], "peak_rss_bytes": r.peak_rss_bytes,
                    "clips": [c.model_dump(mode="json") for c in r.clips(self.images)],
                    "held_out_clips": [c.model_dump(mode="json") for c in r.clips(self.held_out_images, True)]}

        return {"schema": RESULT_SCHEMA, "created": self.created, "command": self.command,
                "machine": dataclasses.asdict(self.machine), "runs": [dataclasses.asdict(r) for r in self.runs],
                "bundle": {"path": self.bundle_path, "source": self.source}, "backend": self.backend,
                "clip": clip_fields(self.base),
                "images": [dataclasses.asdict(i) for i in self.images],
                "held_out_images": [dataclasses.asdict(i) for i in self.held_out_images],
                "floors": [dataclasses.asdict(f) for f in self.floors],
                "recommendations": {r.floor.name: r.result.candidate.model_dump(mode="json")
                                    for r in self.recommendations},
                "front": [r.candidate.model_dump(mode="json") for r in self.front()],
                "candidates": [candidate(r) for r in self.candidates], "stopped_by_budget": self.stopped_by_budget,
                "clips_made": self.clips_made, "clips_reused": self.clips_reused, "seconds": self.seconds}
