"""The search: the fastest candidate above each floor, without running the whole grid
(docs/architecture.md, "Tuning"; docs/tuning.md).

1. The reference (full-compute fp32, the default scheduler at its default steps) on every tuning
   image: its clips are what every candidate is compared with, cached under ``--out``, and it is
   the answer every floor starts from.
2. Precision by precision (fp32 first; one backend held at a time), the candidates in order of
   predicted cost (:class:`~svdtrt.tune.cost.CostModel`, re-ordered after every clip):
   - a candidate predicted slower than every floor's answer, by more than :data:`MARGIN`, ends
     the precision: the rest are at least as slow (the exact floor, met by the reference alone,
     is left out of this rule);
   - else its first pass: one clip on the first image. Its worst frame there bounds its quality
     over all images from above, so if it meets no floor, or is slower (by :data:`MARGIN`) than
     the answer of every floor it meets, it is pruned;
   - else its full pass on the other images, which may make it a floor's answer.
3. The answers checked on the held-out images (their own reference clips first).

Each finished pass of a candidate is one journal record; a re-run takes every record of the
bundle's current graphs and measures only what is missing. ``--time-budget`` ends the search
before a candidate whose predicted clips would overrun it.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from ..bundle.manifest import ProfileSettings
from ..bundle.profiles import weights_identity
from ..media.metrics import PSNR_CAP_DB, clip_metrics
from ..precisions import NAMES as PRECISION_NAMES
from ..publishing import checkpoint
from ..runtime.backends import create_backend
from ..runtime.measure import Machine, PeakMemory, load_average, machine_info
from ..runtime.pipeline import SvdPipeline
from ..runtime.settings import SamplingSettings
from .cost import CallTimer, CostModel, call_name, parse_call_name
from .folder import CandidateRecord, Identity, ImageResult, TuneFolder, open_folder
from .report import write_results
from .results import (
    COMPLETE,
    FAILS_EVERY_FLOOR,
    FIRST_PASS_OVER_BUDGET,
    OVER_BUDGET,
    PREDICTED_SLOWER,
    SLOWER_THAN_ANSWERS,
    CandidateResult,
    ImageKey,
    Recommendation,
    RunLoad,
    TuneImage,
    TuneResults,
)
from .space import Floor, clip_fields, clip_settings, reference_candidate

log = logging.getLogger(__name__)

#: How much slower than a floor's answer a candidate must look (predicted, or timed on its first
#: pass) before it is pruned: room for the cost model's error and for timing noise, so that the
#: search keeps the exhaustive answer (tests/tune/test_search.py).
MARGIN = 0.15


@dataclass
class TuneJob:
    """One ``svdtrt tune``.

    Attributes:
        bundle: the opened bundle.
        backend: the backend every candidate runs on; device, backend_options, threads, model: as
            :func:`~svdtrt.runtime.backends.create_backend` takes them.
        base: the clip's settings (size, seed, conditioning); image i uses ``base.seed + i``.
        candidates: the space (:func:`svdtrt.tune.space.candidates`), the reference first.
        floors: fast, balanced, exact (:func:`svdtrt.tune.space.floors`).
        images, held_out: the tuning images (the first one for first passes) and the check images,
            each with its RGB image.
        out: the tune's folder.
        time_budget_s: seconds this run may take (None: no limit).
        exhaustive: measure every candidate on every image (no pruning): the search's check.
        force: replace an ``out`` that is not this tune's.
        command: the command line, for the results.
    """

    bundle: object
    backend: str
    base: SamplingSettings
    candidates: list[ProfileSettings]
    floors: list[Floor]
    images: list[tuple[TuneImage, PIL.Image.Image]]
    out: Path
    held_out: list[tuple[TuneImage, PIL.Image.Image]] = field(default_factory=list)
    device: str = "cpu"
    backend_options: dict = field(default_factory=dict)
    threads: int | None = None
    model: object | None = None
    time_budget_s: float | None = None
    exhaustive: bool = False
    force: bool = False
    command: str | None = None

    def identity(self, machine: Machine) -> Identity:
        """What the journal's records were measured with (:class:`~svdtrt.tune.folder.Identity`)."""
        gpus = ", ".join(machine.gpus) or "none"
        return Identity(machine=f"{machine.cpu}, {machine.cpus_usable} usable cores, GPUs: {gpus}",
                        backend=self.backend, device=self.device, threads=self.threads, clip=clip_fields(self.base),
                        config_hashes=dict(self.bundle.manifest.config_hashes),
                        reference_weights=weights_identity(self.bundle, "fp32"))


def run_tune(job: TuneJob, progress: bool = False) -> TuneResults:
    """Run the search of ``job`` (see the module doc), continuing from ``job.out``'s journal.

    Returns:
        The results (also written to ``job.out``: :data:`svdtrt.tune.folder.RESULT_FILES`): every
        candidate with what was measured of it, and the answer per floor.
    Raises:
        InputError: ``job.out`` is not this tune's folder (without ``force``) or cannot be written;
            settings the model cannot run.
        BundleError, EngineError, BackendUnavailableError: the backend cannot run a precision of
            the space (a missing graph or engine, a package or GPU this machine lacks).
    """
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    with open_folder(job.out, job.identity(machine), created, job.force) as folder:
        search = _Search(job, folder, progress)
        try:
            search.run()
        finally:
            search.close()
        machine.load_average_end = load_average()
        results = search.results(created, machine)
        write_results(results, folder)
    return results


class _Search:
    def __init__(self, job: TuneJob, folder: TuneFolder, progress: bool):
        from tqdm import tqdm

        self.job, self.folder = job, folder
        self.images = [i for i, _ in job.images]
        self.held_out_images = [i for i, _ in job.held_out]
        self.pixels = {i.key: image for i, image in job.images + job.held_out}
        self.cost = CostModel(job.bundle, job.base)
        self.reference = reference_candidate(job.backend)
        self.table = {c: CandidateResult(c, unet_flops=self.cost.unet_flops(c)) for c in job.candidates}
        self.order: list[CandidateResult] = []  # as taken up
        self.taken: set[ProfileSettings] = set()
        self.start = time.perf_counter()
        self.run_id = f"{datetime.datetime.now():%Y%m%dT%H%M%S}-{os.getpid()}"
        self.clips_made = self.clips_reused = 0
        self.stopped_by_budget = False
        self.precision: str | None = None
        self.timer: CallTimer | None = None
        self.pipeline: SvdPipeline | None = None
        self.references: dict[ImageKey, np.ndarray] = {}
        self.memory = PeakMemory()
        self.runs: dict[str, list[float | None]] = {}
        self._load_records()
        self.bar = tqdm(total=len(self.table), desc="tune", unit="candidate", disable=not progress)

    # -- what the journal already holds --------------------------------------------------------

    def _load_records(self) -> None:
        current = {p: weights_identity(self.job.bundle, p) for p in PRECISION_NAMES}
        for record in self.folder.records():
            c = record.candidate
            if record.weights != current.get(c.precision):
                log.info("not reusing %s: measured with other %s graphs", c.describe(), c.precision)
                continue
            self.cost.add(c.precision, {parse_call_name(k): v for k, v in record.call_seconds.items()},
                          record.fixed_seconds)
            result = self.table.get(c)
            if result is None:
                continue
            found = result.tuning if record.purpose == "tuning" else result.held_out
            for clip in record.images:
                if clip.key in self.pixels and clip.key not in found:
                    found[clip.key] = clip
                    self.clips_reused += 1
                    self.runs.setdefault(record.run, []).append(record.load_average[0] if record.load_average else None)
            if record.peak_rss_bytes is not None:
                result.peak_rss_bytes = max(result.peak_rss_bytes or 0, record.peak_rss_bytes)

    # -- the search ------------------------------------------------------------------------------

    def run(self) -> None:
        precisions = [p for p in PRECISION_NAMES if any(c.precision == p for c in self.table)]
        ref = self.table[self.reference]
        self._take_up(ref)
        self._measure(ref, self.images, "tuning")
        ref.status = COMPLETE
        for precision in precisions:
            queue = [r for r in self.table.values() if r.candidate.precision == precision and r is not ref]
            while queue and not self.stopped_by_budget:
                queue.sort(key=lambda r: (self.cost.predict(r.candidate), r.unet_flops))
                result = queue.pop(0)
                predicted = self.cost.predict(result.candidate)
                if not self.job.exhaustive and self._slower_than_every_answer(predicted):
                    for r in [result, *queue]:
                        self._take_up(r, predicted=self.cost.predict(r.candidate))
                        self._settle(r, PREDICTED_SLOWER)
                    break
                self._take_up(result, predicted)
                self._evaluate(result)
        for r in self.table.values():
            if r.candidate not in self.taken:  # the budget ended the search before it
                self._take_up(r)
                self._settle(r, OVER_BUDGET)
        self.bar.close()
        if not self.stopped_by_budget:
            self._check_held_out()

    def _take_up(self, result: CandidateResult, predicted: float | None = None) -> None:
        if result.candidate not in self.taken:
            result.predicted_seconds = predicted
            self.taken.add(result.candidate)
            self.order.append(result)
            self.bar.set_postfix_str(result.label)
            self.bar.update()

    def _evaluate(self, result: CandidateResult) -> None:
        """First pass, then the full pass if the first pass leaves it a chance (module doc)."""
        first = self.images[:1]
        if not self._measure(result, first, "tuning"):
            result.status = OVER_BUDGET
            return
        psnr, ssim = result.quality(first)
        seconds = result.seconds(first)
        meets = [f for f in self.job.floors if f.met(psnr, ssim)]
        if not self.job.exhaustive:
            if not meets:
                result.status = FAILS_EVERY_FLOOR
                return
            if all(seconds > self._answer_seconds(f) * (1 + MARGIN) for f in meets):
                result.status = SLOWER_THAN_ANSWERS
                return
        complete = self._measure(result, self.images, "tuning")
        result.status = COMPLETE if complete else FIRST_PASS_OVER_BUDGET

    def answer(self, floor: Floor) -> CandidateResult:
        """The fastest complete candidate that meets ``floor`` (the reference meets every floor),
        among those no other complete candidate of its precision dominates by counted work: one
        that makes no more UNet FLOPs and is at least as close to the reference cannot be slower
        but for timing noise (clips of one candidate may be timed in another run, at another
        load), so the noise never picks more work for less quality."""
        done = [r for r in self.table.values() if r.complete(self.images) and floor.met(*r.quality(self.images))]
        undominated = [r for r in done if not any(o.dominates(r, self.images) for o in done)]
        return min(undominated, key=lambda r: (r.seconds(self.images), -r.quality(self.images)[0]))

    def _answer_seconds(self, floor: Floor) -> float:
        return self.answer(floor).seconds(self.images)

    def _slower_than_every_answer(self, seconds: float) -> bool:
        """Whether ``seconds`` is slower, by :data:`MARGIN`, than the answer of every floor but
        those only the reference meets (:attr:`Floor.identical`)."""
        return all(seconds > self._answer_seconds(f) * (1 + MARGIN) for f in self.job.floors if not f.identical)

    def _settle(self, result: CandidateResult, status: str) -> None:
        """Mark a candidate the search does not measure (further) with ``status``, unless the
        journal already held more of it."""
        if result.complete(self.images):
            result.status = COMPLETE
        elif result.tuning:
            result.status = f"first pass, then {status.removeprefix('not measured: ')}"
        else:
            result.status = status

    # -- clips -----------------------------------------------------------------------------------

    def _measure(self, result: CandidateResult, images: list[TuneImage], purpose: str) -> bool:
        """Make ``result``'s missing clips on ``images`` and journal them as one record; False when
        the time budget stopped it first (nothing of it is made then). The reference also remakes
        a clip whose cached file is gone (its record stands)."""
        found = result.tuning if purpose == "tuning" else result.held_out
        is_reference = result.candidate == self.reference
        todo = [i for i in images if i.key not in found or (is_reference and self._cached_reference(i) is None)]
        if not todo:
            return True
        # The reference is made whatever the budget: without it nothing can be compared.
        if not is_reference and self._over_budget(self.cost.predict(result.candidate) * len(todo)):
            self.stopped_by_budget = True
            return False
        self._use(result.candidate.precision)
        self.memory.reset()
        settings = clip_settings(self.job.base, result.candidate)
        clips, calls, fixed = [], {}, []
        for image in todo:
            self.timer.take()
            clip = self.pipeline(self.pixels[image.key], settings, timings=True)
            self.clips_made += 1
            clip_calls = self.timer.take()
            fixed.append(clip.timings["total"] - sum(sum(v) for v in clip_calls.values()))
            for call, seconds in clip_calls.items():
                calls.setdefault(call, []).extend(seconds)
            if is_reference:
                self.folder.save_reference(image.sha256, image.seed, clip.frames)
                self.references[image.key] = clip.frames
                psnr, ssim = PSNR_CAP_DB, 1.0  # the reference is what "identical" means
            else:
                m = clip_metrics(clip.frames, self._reference_frames(image))
                psnr, ssim = m["min_psnr_db"], m["min_ssim"]
            if image.key not in found:
                clips.append(ImageResult(name=image.name, sha256=image.sha256, seed=image.seed,
                                         seconds=clip.timings["total"], min_psnr_db=psnr, min_ssim=ssim))
        peak = self.memory.read().peak_rss_bytes
        self.cost.add(result.candidate.precision, calls, fixed)
        if clips:
            load = load_average()
            self.folder.append(CandidateRecord(
                candidate=result.candidate, weights=weights_identity(self.job.bundle, result.candidate.precision),
                purpose=purpose, images=clips, call_seconds={call_name(k): v for k, v in calls.items()},
                fixed_seconds=fixed, peak_rss_bytes=peak, run=self.run_id, load_average=load,
                time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")))
            checkpoint("tune-candidate")  # the kill tests' instant: right after a record is whole
            for clip in clips:
                found[clip.key] = clip
            self.runs.setdefault(self.run_id, []).extend([load[0] if load else None] * len(clips))
        if peak is not None:
            result.peak_rss_bytes = max(result.peak_rss_bytes or 0, peak)
        return True

    def _over_budget(self, seconds: float) -> bool:
        budget = self.job.time_budget_s
        return budget is not None and time.perf_counter() - self.start + seconds > budget

    def _cached_reference(self, image: TuneImage) -> np.ndarray | None:
        if image.key not in self.references:
            b = self.job.base
            frames = self.folder.reference(image.sha256, image.seed, (b.frames, b.height, b.width, 3))
            if frames is not None:
                self.references[image.key] = frames
        return self.references.get(image.key)

    def _reference_frames(self, image: TuneImage) -> np.ndarray:
        """The reference clip of ``image`` (the reference is measured first on every image set, and
        remakes a clip whose file is gone, so a missing one is a bug)."""
        frames = self._cached_reference(image)
        if frames is None:
            raise RuntimeError(f"no reference clip of {image.name}: the reference is measured first")  # a bug
        return frames

    def _use(self, precision: str) -> None:
        """Hold the backend of ``precision`` (one at a time: each precision's sessions or engines
        are freed before the next's are made), warmed up on the calls the space makes."""
        if self.precision == precision:
            return
        self.close()
        job = self.job
        backend = create_backend(job.backend, job.bundle, precision, model=job.model, device=job.device,
                                 threads=job.threads, **job.backend_options)
        self.timer, self.precision = CallTimer(backend), precision
        self.pipeline = SvdPipeline(self.timer, job.bundle)
        # A session's first calls at a new shape are slower (allocation, kernel choice): one short
        # clip per kind of call keeps them out of the first pass's timing.
        caching = any(c.precision == precision and c.cache_interval > 1 for c in self.table)
        warm_ups = [{"steps": 2, "guidance_steps": 1}]
        if caching:
            warm_ups.append({"steps": 4, "cache_interval": 2, "guidance_steps": 2})
        image = self.pixels[self.images[0].key]
        for work in warm_ups:
            self.pipeline(image, dataclasses.replace(job.base, scheduler=self.reference.scheduler, **work))
        self.timer.take()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.close()
        self.timer = self.pipeline = self.precision = None

    # -- held-out check and results ---------------------------------------------------------------

    def _check_held_out(self) -> None:
        """The answers on the held-out images, against those images' reference clips (made first)."""
        if not self.held_out_images:
            return
        ref = self.table[self.reference]
        answers = {self.answer(f).candidate: self.answer(f) for f in self.job.floors}
        answers.pop(self.reference)
        for result in [ref] + sorted(answers.values(), key=lambda r: PRECISION_NAMES.index(r.candidate.precision)):
            if not self._measure(result, self.held_out_images, "held_out"):
                log.warning("the time budget ended the held-out check before %s", result.label)
                return

    def results(self, created: str, machine) -> TuneResults:
        job = self.job
        runs = [RunLoad(run, len(loads), min((x for x in loads if x is not None), default=None),
                        max((x for x in loads if x is not None), default=None)) for run, loads in self.runs.items()]
        return TuneResults(
            created=created, command=job.command, machine=machine, runs=runs,
            bundle_path=str(job.bundle.path), source=job.bundle.source, backend=job.backend, base=job.base,
            images=self.images, held_out_images=self.held_out_images, floors=job.floors,
            reference=self.table[self.reference], candidates=self.order,
            recommendations=[Recommendation(f, self.answer(f)) for f in job.floors],
            stopped_by_budget=self.stopped_by_budget, clips_made=self.clips_made, clips_reused=self.clips_reused,
            seconds=time.perf_counter() - self.start)
