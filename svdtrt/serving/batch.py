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
- A file at a clip's name that the journal does not record as made is not taken for the clip
  (it may be the user's): that clip fails with a one-line reason, and the file is left alone. A
  clip whose journal line cannot be written (a full disk) is removed again, so that this holds.
- Ctrl-C (and SIGTERM, which ``svdtrt batch`` turns into it) stops a batch: the clips being made
  are lost, every published one stays with its journal line.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, SvdtrtError, first_line
from ..media.images import MAX_IMAGE_PIXELS
from ..progress import status, ticking
from ..publishing import Journal, NotARegularFile, path_kind, read_file
from .worker import FORMATS, ClipMaker, WorkerOptions, encode_clip

log = logging.getLogger(__name__)

#: The journal's name inside ``--out``.
JOURNAL = "clips.jsonl"
#: Ray restarts a dead worker this many times, and retries the clip it was making as many times,
#: so one crash (a killed process, an out-of-memory kill) costs one retry; a clip that kills its
#: worker every time is recorded as failed after that.
MAX_RESTARTS = 3
#: The largest image file a batch reads: 4 bytes per pixel (uncompressed RGBA) at the largest
#: image svdtrt reads (:data:`~svdtrt.media.images.MAX_IMAGE_PIXELS`), 256 MiB.
MAX_IMAGE_FILE_BYTES = 4 * MAX_IMAGE_PIXELS


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


def check_out(out: Path) -> None:
    """Refuse an output folder ``out`` that a batch cannot use, before Ray starts: a path that is
    not a folder, or a journal (:data:`JOURNAL`) that is not a regular file.

    Raises:
        InputError: one line naming what is in the way.
    """
    if os.path.lexists(out) and not out.is_dir():
        raise InputError(f"--out '{out}' is {path_kind(out)}; give a folder for the clips")
    Journal(out / JOURNAL, "batch").check()


def run_batch(job: BatchJob, progress: bool = True,
              join: Callable[[], WorkerOptions] | None = None) -> BatchSummary:
    """Make the clips of ``job`` that are not in ``job.out`` yet, on Ray; see the module doc.

    ``join`` joins Ray and returns the workers' options with their CPUs
    (:func:`svdtrt.serving.preflight.join`); it is called only when some clip is left to make,
    so a finished batch starts no Ray. None: Ray is joined and ``job.worker`` is final
    (:func:`svdtrt.serving.cluster.connect`).

    Raises:
        InputError: the output folder cannot be created or written (a full disk included), two
            images share an output name, a format other than mp4 or npy, a journal path that
            is not a file, or (from ``join``) a Ray cluster that cannot be joined.
        SvdtrtError: a worker cannot load the backend (its own error, e.g. BackendUnavailableError).
    """
    from ..publishing import Lock, os_error_message

    if job.fmt not in FORMATS:
        raise InputError(f"unknown format '{job.fmt}': choose from {', '.join(FORMATS)}")
    names = output_names(job.images, job.fmt)
    check_out(job.out)
    try:
        job.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(os_error_message(job.out, e)) from None
    start = time.perf_counter()
    journal = Journal(job.out / JOURNAL, "batch")
    # One batch at a time per folder: a second waits (and says so), so no clip is made twice.
    with Lock(journal.path, purpose="batch"):
        journal.repair()
        published = {r.get("output") for r in journal.records() if r.get("status") == "ok"}  # made
        there = [i for i in job.images if os.path.lexists(job.out / names[i])]
        summary = BatchSummary(skipped=[names[i] for i in there if names[i] in published])
        for image in there:
            if names[image] not in published:
                _finish(job, image, names[image], {"status": "failed", "error": _foreign(job.out / names[image])},
                        journal, summary, dataclasses.asdict(job.settings), 0.0)
        todo = deque(i for i in job.images if i not in there)
        if todo:
            worker = join() if join is not None else job.worker
            _run(dataclasses.replace(job, worker=worker), todo, names, journal, summary, progress)
    summary.seconds = time.perf_counter() - start
    return summary


def _foreign(path: Path) -> str:
    return (f"'{path}' exists but {JOURNAL} does not record it as made (a file of yours, or a clip whose run was "
            "killed before recording it); it was left alone: move it away to make this clip")


def _run(job: BatchJob, todo: deque, names: dict, journal: Journal, summary: BatchSummary, progress: bool) -> None:
    import ray

    from .. import errors

    actor = ray.remote(ClipWorker).options(**job.worker.ray_resources(), max_restarts=MAX_RESTARTS,
                                           max_task_retries=MAX_RESTARTS)
    workers = [actor.remote(job.worker) for _ in range(min(job.workers, len(todo)))]
    try:
        # each worker's process imports its libraries and loads the bundle: seconds, shown as a status
        with status(f"starting {len(workers)} Ray worker(s), each loading the bundle", enabled=progress, logger=log):
            ready = ray.get([w.ready.remote() for w in workers])
        for error in ready:
            if error:
                kind, message = error
                cls = getattr(errors, kind, SvdtrtError)
                raise (cls if cls.__init__ is SvdtrtError.__init__ else SvdtrtError)(message)
        _schedule(job, todo, names, journal, summary, progress, actor, workers)
    except KeyboardInterrupt:
        # The workers go with this driver's Ray. Killing them mid-task would have Ray announce the
        # task's retries on the way out (a clip nobody will retry now).
        workers.clear()
        raise
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
            data = read_file(image, MAX_IMAGE_FILE_BYTES)
        except (OSError, NotARegularFile) as e:
            _finish(job, image, names[image], {"status": "failed", "error": _unreadable(image, e)}, journal,
                    summary, settings, 0.0)
            bar.update()
            if todo:
                submit(worker)
            return
        running[worker.make.remote(data, str(image), job.settings, job.fmt)] = (image, worker, time.perf_counter())

    total = len(job.images)
    # a clip takes seconds to minutes: the bar's clock ticks between them
    with tqdm(total=total, initial=total - len(todo), desc="clips", unit="clip", disable=not progress) as bar, \
            ticking(bar):
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


def _unreadable(image: Path, e: OSError | NotARegularFile) -> str:
    if isinstance(e, FileNotFoundError):
        return f"image '{image}' not found; give the path of a PNG or JPEG file"
    if isinstance(e, NotARegularFile):
        return f"image '{image}' {e}; give the path of a PNG or JPEG file"
    return f"image '{image}' cannot be read ({e.strerror or type(e).__name__})"


def _finish(job: BatchJob, image: Path, name: str, result: dict, journal: Journal, summary: BatchSummary,
            settings: dict, seconds: float) -> None:
    """Publish a finished clip and journal the attempt.

    Raises:
        InputError: the journal line cannot be written (a full disk); the clip just published is
            removed again, since an unrecorded clip would be taken for a file of the user's.
    """
    from ..media.video import CLIP_FILE, FRAMES_FILE
    from ..publishing import OutputFile, os_error_message

    published = None
    if result["status"] == "ok":
        try:
            out = OutputFile(job.out / name, CLIP_FILE if job.fmt == "mp4" else FRAMES_FILE)
            out.write(lambda part: part.write_bytes(result["data"]))
            published = out.publish()
        except InputError as e:  # the folder turned read-only or full; the next run retries
            result = {**result, "status": "failed", "error": first_line(e)}
    try:
        journal.append({
            "input": str(image), "output": name, "status": result["status"], "error": result.get("error"),
            "seed": job.settings.seed, "settings": settings, "format": job.fmt, "timings": result.get("timings"),
            "seconds": round(seconds, 3), "worker": result.get("worker"),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
    except OSError as e:
        if published is not None:
            published.unlink(missing_ok=True)
        raise InputError(f"{os_error_message(journal.path, e)}; the clips recorded so far are kept") from None
    (summary.made if result["status"] == "ok" else summary.failed).append(name)
