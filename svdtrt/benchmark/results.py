"""Bench's results, typed (what :func:`svdtrt.benchmark.runner.run_benchmark` returns and
:mod:`svdtrt.benchmark.report` renders), and their JSON form, ``results.json`` (schema
:data:`RESULT_SCHEMA`, documented in docs/benchmarks.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..runtime.measure import Machine, Memory, OrderStats

RESULT_SCHEMA = "svdtrt-bench/1"


@dataclass(frozen=True)
class Overhead:
    """The loop's own cost per denoising step (medians): seconds, and shares of the step and of
    the UNet call."""

    per_step_seconds: float
    unet_call_seconds: float
    share_of_step: float
    share_of_unet_call: float


@dataclass(frozen=True)
class Work:
    """A row's work settings and the UNet work of its clip (:func:`svdtrt.models.flops.clip_unet_flops`):
    UNet calls and FLOPs per clip, and the calls per graph."""

    scheduler: str
    steps: int
    cache_interval: int
    guidance_steps: int | None
    unet_calls: int
    unet_flops: float
    graphs: dict


@dataclass
class Row:
    """One row: a backend and precision at the base settings (``rows``), or at one work setting
    (``work_rows``).

    Attributes:
        status: ``"measured"`` or ``"skipped"`` (with ``reason``).
        device: where it ran (``cpu``, ``cuda``); None for a skipped non-torch row.
        reference: True for diffusers' own pipeline, the row every other is compared with.
        stages: per-stage seconds over the measured clips (``total``, ``clip``, ``vae_encode``,
            ``unet``, ``unet_per_step``, ``vae_decode``, ``other``, ...).
        accuracy: the clip against the reference clip (:func:`svdtrt.media.metrics.clip_metrics`);
            None for the reference.
        runs: each measured clip's seconds per stage.
        work: the work settings and the clip's UNet work (measured rows but the reference's).
        skipped_settings: a skipped work row's settings.
        note, reference_clip: what the stages or the accuracy are measured against, in words.
        speedup_vs_reference, unet_speedup_vs_fp32: ``rows`` only: the reference's clip time over
            this row's, and the same backend's fp32 UNet call time over this row's.
        speedup_vs_full_compute, flops_saving_vs_full_compute: ``work_rows`` only, against the
            same backend and precision at the base settings.
    """

    backend: str
    precision: str
    status: str
    device: str | None = None
    reason: str | None = None
    work_row: bool = False
    reference: bool = False
    stages: dict[str, OrderStats] = field(default_factory=dict)
    overhead: Overhead | None = None
    memory: Memory | None = None
    accuracy: dict | None = None
    runs: list[dict[str, float]] = field(default_factory=list)
    work: Work | None = None
    skipped_settings: dict | None = None
    note: str | None = None
    reference_clip: str | None = None
    speedup_vs_reference: float | None = None
    unet_speedup_vs_fp32: float | None = None
    speedup_vs_full_compute: float | None = None
    flops_saving_vs_full_compute: float | None = None

    @property
    def measured(self) -> bool:
        return self.status == "measured"

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"

    def median(self, stage: str) -> float | None:
        """Median seconds of ``stage``; None when the row has no such stage."""
        stats = self.stages.get(stage)
        return None if stats is None else stats.median

    def to_json(self) -> dict:
        """The row as ``results.json`` has it."""
        head = {"backend": self.backend, "precision": self.precision}
        if not self.measured:
            if self.work_row:
                return {**head, "status": self.status, "work": self.skipped_settings, "reason": self.reason}
            return {**head, "status": self.status, "device": self.device, "reason": self.reason}
        out = {**head, "device": self.device, "status": self.status, "reference": self.reference,
               "stages": {k: asdict(v) for k, v in self.stages.items()},
               "overhead": asdict(self.overhead) if self.overhead else None,
               "memory": asdict(self.memory), "accuracy": self.accuracy, "runs": self.runs}
        if self.work is not None:
            out["work"] = asdict(self.work)
        if self.note is not None:
            out["note"] = self.note
        if self.work_row:
            out.update(reference_clip=self.reference_clip, speedup_vs_full_compute=self.speedup_vs_full_compute,
                       flops_saving_vs_full_compute=self.flops_saving_vs_full_compute)
        else:
            out.update(speedup_vs_reference=self.speedup_vs_reference, unet_speedup_vs_fp32=self.unet_speedup_vs_fp32)
        return out


@dataclass
class BenchResults:
    """A whole benchmark run.

    Attributes:
        created, command: when, and the command line (None for an API call).
        machine: the machine (:func:`svdtrt.runtime.measure.machine_info`), with the load
            average at the end (``load_average_end``).
        versions: package versions.
        bundle: ``{"path", "source", "precisions"}``.
        settings, work: the base sampling settings, and each work setting (``vars`` of them).
        image: ``{"size": [width, height], "sha256"}`` of the conditioning image.
        warmup, repeat, device, threads: as :func:`run_benchmark` was called.
        rows, work_rows: the rows (:class:`Row`).
        seconds: wall time of the whole benchmark.
    """

    created: str
    command: str | None
    machine: Machine
    versions: dict
    bundle: dict
    settings: dict
    image: dict
    warmup: int
    repeat: int
    device: str
    threads: int | None
    work: list[dict]
    rows: list[Row] = field(default_factory=list)
    work_rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    def measured(self) -> list[Row]:
        """The measured rows of ``rows``, the reference first."""
        return [r for r in self.rows if r.measured]

    def to_json(self) -> dict:
        """``results.json``."""
        return {"schema": RESULT_SCHEMA, "created": self.created, "command": self.command, "machine": asdict(self.machine),
                "versions": self.versions, "bundle": self.bundle, "settings": self.settings, "image": self.image,
                "warmup": self.warmup, "repeat": self.repeat, "device": self.device, "threads": self.threads,
                "work": self.work, "rows": [r.to_json() for r in self.rows],
                "work_rows": [r.to_json() for r in self.work_rows], "seconds": self.seconds}
