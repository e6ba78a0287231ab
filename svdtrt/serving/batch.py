"""``svdtrt batch``: clips for a folder (or a list) of images on Ray, one warm backend per worker
(docs/serving.md).

- Workers are Ray actors (:class:`ClipWorker`), each holding a
  :class:`~svdtrt.serving.worker.ClipMaker`; the driver hands each idle worker the next image's
  bytes (so only the bundle, not the images, must be on every node) and gets the encoded clip back.
- Every clip is published by the driver with :class:`svdtrt.publishing.OutputFile` (``OUT/<image
  stem>.<format>``): it appears complete or not at all, and never over a file already there.
- ``OUT/clips.jsonl`` gets one JSON line per finished attempt (input, output, status, error, seed,
  settings, timings, worker), appended whole under the batch's lock; a line left half-written by a
  killed driver is cut off by the next run.
- Re-running the same command skips the clips already published and retries the others (failed,
  or never finished). A worker process that dies mid-clip is restarted by Ray and the clip is
  retried on it (actor restarts and task retries): it costs that clip's retry, nothing else.

Every clip uses the same seed, so a clip equals ``svdtrt run --image IMAGE --seed SEED``'s.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, SvdtrtError, first_line
from ..media.images import list_images  # noqa: F401  (batch's image list; its callers import it from here)
from ..publishing import Journal
from .worker import FORMATS, ClipMaker, WorkerOptions, encode_clip

log = logging.getLogger(__name__)

#: The journal's name inside ``--out``.
JOURNAL = "clips.jsonl"
#: Ray restarts a dead worker this many times, and retries the clip it was making as many times,
#: so one crash (a killed process, an out-of-memory kill) costs one retry; a clip that kills its
#: worker every time is recorded as failed after that.
MAX_RESTARTS = 3


def output_names(images: list[Path], fmt: str) -> dict[Path, str]:
    """Each image's output file name, ``<stem>.<fmt>``.

    Raises:
        InputError: two images would write the same file.
    """
    names: dict[str, Path] = {}
    for image in images:
        name = f"{image.stem}.{fmt}"
        if name in names and names[name] != image:
            raise InputError(f"'{names[name]}' and '{image}' would both write '{name}'; rename one of them")
        names[name] = image
    return {image: name for name, image in names.items()}


class ClipWorker:
    """A batch worker (a Ray actor): one warm backend. Construction never raises: an error
    loading the backend is kept and returned by :meth:`ready`, so the driver can print it as one
    line instead of Ray's traceback."""

    def __init__(self, options: WorkerOptions):
        self.maker, self.error = None, None
        try:
            self.maker = ClipMaker(options)
        except SvdtrtError as e:
            self.error = (type(e).__name__, first_line(e))

    def ready(self) -> tuple[str, str] | None:
        """None once the backend is loaded; else the error's class name and its one line."""
        return self.error

    def make(self, data: bytes, name: str, settings, fmt: str) -> dict:
        """The clip of the image ``data`` (the file ``name``), encoded as ``fmt``: a dict with
        ``status`` ok and ``data``, ``timings``; or ``status`` failed and ``error`` (one line)."""
        from ..media.images import decode_image

        where = f"{socket.gethostname()}:{os.getpid()}"
        try:
            clip = self.maker.make(decode_image(data, name), settings)
            return {"status": "ok", "data": encode_clip(clip.frames, fmt, settings.fps), "timings": clip.timings,
                    "worker": where}
        except SvdtrtError as e:
            return {"status": "failed", "error": first_line(e), "worker": where}
        except Exception as e:  # a bug: the traceback goes to the worker's log
            log.exception("clip of %s failed", name)
            return {"status": "failed", "error": f"{type(e).__name__}: {first_line(e)[:200]}", "worker": where}


@dataclass
class BatchJob:
    """One ``svdtrt batch`` run.

    Attributes:
        worker: what each worker loads and the resources it asks for.
        images: the input images.
        out: the output folder (created if missing).
        settings: the checked sampling settings every clip uses.
        workers: number of workers (actors).
        fmt: ``mp4`` or ``npy``.
    """

    worker: WorkerOptions
    images: list[Path]
    out: Path
    settings: object
    workers: int = 1
    fmt: str = "mp4"


@dataclass
class BatchSummary:
    """What a run did: clips ``made`` and ``failed`` now, and ``skipped`` (already published)."""

    made: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_batch(job: BatchJob, progress: bool = True) -> BatchSummary:
    """Make the clips of ``job`` that are not in ``job.out`` yet, on the connected Ray
    (:func:`svdtrt.serving.cluster.connect`); see the module doc.

    Raises:
        InputError: the output folder cannot be created or written, two images share an output
            name, or a format other than mp4 or npy.
        SvdtrtError: a worker cannot load the backend (its own error, e.g. BackendUnavailableError).
    """
    from ..publishing import Lock, os_error_message

    if job.fmt not in FORMATS:
        raise InputError(f"unknown format '{job.fmt}': choose from {', '.join(FORMATS)}")
    names = output_names(job.images, job.fmt)
    try:
        job.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(os_error_message(job.out, e)) from None
    start = time.perf_counter()
    journal = Journal(job.out / JOURNAL)
    # One batch at a time per folder: a second waits (and says so), so no clip is made twice.
    with Lock(journal.path, purpose="batch"):
        journal.repair()
        summary = BatchSummary(skipped=[names[i] for i in job.images if (job.out / names[i]).exists()])
        todo = deque(i for i in job.images if not (job.out / names[i]).exists())
        if todo:
            _run(job, todo, names, journal, summary, progress)
    summary.seconds = time.perf_counter() - start
    return summary


def _run(job: BatchJob, todo: deque, names: dict, journal: Journal, summary: BatchSummary, progress: bool) -> None:
    import ray

    from .. import errors

    actor = ray.remote(ClipWorker).options(**job.worker.ray_resources(), max_restarts=MAX_RESTARTS,
                                           max_task_retries=MAX_RESTARTS)
    workers = [actor.remote(job.worker) for _ in range(min(job.workers, len(todo)))]
    try:
        for error in ray.get([w.ready.remote() for w in workers]):
            if error:
                kind, message = error
                cls = getattr(errors, kind, SvdtrtError)
                raise (cls if cls.__init__ is SvdtrtError.__init__ else SvdtrtError)(message)
        _schedule(job, todo, names, journal, summary, progress, actor, workers)
    finally:
        for w in workers:
            ray.kill(w)


def _schedule(job: BatchJob, todo: deque, names: dict, journal: Journal, summary: BatchSummary, progress: bool,
              actor, workers: list) -> None:
    """Hand each idle worker the next image until none is left; publish and journal each result."""
    import ray
    from tqdm import tqdm

    settings = dataclasses.asdict(job.settings)
    running = {}

    def submit(worker) -> None:
        image = todo.popleft()
        try:
            data = image.read_bytes()
        except OSError as e:
            _finish(job, image, names[image], {"status": "failed", "error": _unreadable(image, e)}, journal,
                    summary, settings, 0.0)
            bar.update()
            if todo:
                submit(worker)
            return
        running[worker.make.remote(data, str(image), job.settings, job.fmt)] = (image, worker, time.perf_counter())

    total = len(job.images)
    with tqdm(total=total, initial=total - len(todo), desc="clips", unit="clip", disable=not progress) as bar:
        for w in workers:
            if todo:
                submit(w)
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            image, worker, began = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:  # its worker died more than MAX_RESTARTS times
                result = {"status": "failed", "error": f"its worker died ({type(e).__name__}); re-run to retry it"}
                ray.kill(worker)
                workers[workers.index(worker)] = worker = actor.remote(job.worker)  # a fresh one for the rest
            _finish(job, image, names[image], result, journal, summary, settings, time.perf_counter() - began)
            bar.update()
            if todo:
                submit(worker)


def _unreadable(image: Path, e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return f"image '{image}' not found; give the path of a PNG or JPEG file"
    return f"image '{image}' cannot be read ({e.strerror or type(e).__name__})"


def _finish(job: BatchJob, image: Path, name: str, result: dict, journal: Journal, summary: BatchSummary,
            settings: dict, seconds: float) -> None:
    """Publish a finished clip and journal the attempt."""
    from ..publishing import OutputFile

    if result["status"] == "ok":
        try:
            out = OutputFile(job.out / name)
            out.write(lambda part: part.write_bytes(result["data"]))
            out.publish()
        except InputError as e:  # the folder turned read-only or full; the next run retries
            result = {**result, "status": "failed", "error": first_line(e)}
    (summary.made if result["status"] == "ok" else summary.failed).append(name)
    journal.append({
        "input": str(image), "output": name, "status": result["status"], "error": result.get("error"),
        "seed": job.settings.seed, "settings": settings, "format": job.fmt, "timings": result.get("timings"),
        "seconds": round(seconds, 3), "worker": result.get("worker"),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
