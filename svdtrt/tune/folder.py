"""A tune's ``--out`` folder: the journal of finished candidates, the cached reference clips and the
result files (docs/architecture.md, "Tuning").

- ``candidates.jsonl`` (:class:`svdtrt.publishing.Journal`): the first line says what the tune
  measures (:class:`Identity`); then one line per finished pass of a candidate (its first pass,
  the rest of its tuning images, its held-out check: :class:`CandidateRecord`), appended whole
  under the folder's lock, so a kill loses at most the pass in flight and a re-run continues from
  the records.
- ``reference/<image sha256>-seed<seed>.npy``: the full-compute fp32 clip of each image,
  float32 [F, H, W, 3] in [0, 1], published whole (:class:`svdtrt.publishing.OutputFile`).
- ``results.json``, ``results.md``, ``pareto.png``: written from the journal by every run, each
  published whole.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..bundle.manifest import ProfileSettings
from ..errors import InputError
from ..publishing import (
    DirectoryTransaction,
    FileKind,
    FolderKind,
    Journal,
    Lock,
    OutputFile,
    os_error_message,
)

JOURNAL = "candidates.jsonl"
REFERENCES = "reference"
#: The result files every run writes (:mod:`svdtrt.tune.report`).
RESULT_FILES = ("results.json", "results.md", "pareto.png")

#: What a tune may replace in its own folder: the folder is the tune's (its journal's first line
#: names it, :func:`open_folder`), so its references and result files are the tune's own.
TUNE_FILE = FileKind("a file of this tune folder", lambda head: True)
#: A tune's folder: what ``tune --force`` may start over (never a folder svdtrt did not make).
TUNE_FOLDER = FolderKind("a tune folder", JOURNAL, (JOURNAL, f".{JOURNAL}.lock", REFERENCES, *RESULT_FILES),
                         suffix=".tune")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(_Record):
    """What a tune measures, besides the candidates and images: records of another identity are
    not comparable (another machine, backend, clip, thread count, model or reference weights)."""

    machine: str
    backend: str
    device: str
    threads: int | None
    clip: dict[str, str | int | float | None]
    config_hashes: dict[str, str]
    reference_weights: str


class Header(_Record):
    kind: Literal["tune"] = "tune"
    identity: Identity
    created: str


class ImageResult(_Record):
    """One clip of a candidate: the image (its name, the sha256 of its pixels, its seed), seconds
    per clip (the loop's ``total``), and the worst frame against the image's reference clip (PSNR
    in dB, SSIM)."""

    name: str
    sha256: str
    seed: int
    seconds: float
    min_psnr_db: float
    min_ssim: float

    @property
    def key(self) -> tuple[str, int]:
        return self.sha256, self.seed


class CandidateRecord(_Record):
    """One finished evaluation of a candidate on some images, in one run.

    Attributes:
        weights: the weights identity of the candidate's precision it ran with
            (:func:`svdtrt.bundle.profiles.weights_identity`); a record of other weights is not reused.
        purpose: ``tuning`` (the tuning images) or ``held_out`` (the check on images not tuned on).
        call_seconds: seconds of each UNet call, by ``"<component> b<batch>"``.
        fixed_seconds: per clip, seconds outside the UNet calls.
        peak_rss_bytes: the process's peak resident memory while the clips were made.
        run: the run's id; load_average: the 1, 5 and 15-minute load when the record was written.
    """

    kind: Literal["candidate"] = "candidate"
    candidate: ProfileSettings
    weights: str
    purpose: Literal["tuning", "held_out"]
    images: list[ImageResult]
    call_seconds: dict[str, list[float]]
    fixed_seconds: list[float]
    peak_rss_bytes: int | None
    run: str
    load_average: list[float] | None
    time: str


class TuneFolder:
    """An opened ``--out`` folder (:func:`open_folder`); use it only while it is open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.journal = Journal(self.path / JOURNAL)

    def header(self) -> Header | None:
        """The journal's first line; None where there is no whole one (no journal, or a first write
        a kill cut short).

        Raises:
            ValueError: a whole first line that is not a tune's header (another version's journal).
        """
        try:
            with open(self.journal.path, "rb") as f:
                first = f.readline()
        except FileNotFoundError:
            return None
        if not first.endswith(b"\n"):
            return None
        try:
            return Header.model_validate_json(first)
        except ValidationError:
            raise ValueError(first[:200]) from None

    def records(self) -> list[CandidateRecord]:
        """The finished passes, oldest first (call after :meth:`Journal.repair`, under the lock).

        Raises:
            InputError: a line that is not a tune record.
        """
        records = []
        for i, text in enumerate(self.journal.path.read_bytes().splitlines()[1:], 2):
            try:
                records.append(CandidateRecord.model_validate_json(text))
            except ValidationError:
                raise InputError(f"line {i} of '{self.journal.path}' is not a tune record; pass --force to start "
                                 "this tune over") from None
        return records

    def append(self, record: Header | CandidateRecord) -> None:
        try:
            self.journal.append(record.model_dump(mode="json"))
        except OSError as e:
            raise InputError(os_error_message(self.journal.path, e)) from None

    def _reference_path(self, sha256: str, seed: int) -> Path:
        return self.path / REFERENCES / f"{sha256}-seed{seed}.npy"

    def reference(self, sha256: str, seed: int, shape: tuple[int, ...]) -> np.ndarray | None:
        """The cached reference clip of an image and seed, float32 ``shape``; None when there is
        none (or one of another shape, which the next :meth:`save_reference` replaces)."""
        path = self._reference_path(sha256, seed)
        try:
            frames = np.load(path)
        except (OSError, ValueError):
            return None
        return frames if frames.shape == shape and frames.dtype == np.float32 else None

    def save_reference(self, sha256: str, seed: int, frames: np.ndarray) -> None:
        path = self._reference_path(sha256, seed)
        path.parent.mkdir(exist_ok=True)
        out = OutputFile(path, TUNE_FILE, force=True)  # only one of another shape can be there
        out.write(lambda part: np.save(part, np.asarray(frames, dtype=np.float32)))
        out.publish()

    def publish(self, name: str, writer: Callable[[Path], None]) -> Path:
        """Write result file ``name`` whole, replacing the previous run's."""
        out = OutputFile(self.path / name, TUNE_FILE, force=True)
        out.write(writer)
        return out.publish()


@contextlib.contextmanager
def open_folder(path: str | os.PathLike, identity: Identity, created: str, force: bool = False) -> Iterator[TuneFolder]:
    """Open (or create) the tune folder ``path`` for ``identity`` and hold its lock: a second tune
    of the same folder waits. A folder of the same identity is continued.

    Raises:
        InputError: ``path`` is a file, or a folder that is not a tune folder, or holds a tune of
            another identity, and ``force`` is false (with ``force`` it is replaced by an empty
            one, in one atomic step); or it cannot be written.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(f"--out '{path}' is a file; give a folder for the tune's journal and results")
    folder = TuneFolder(path)
    if path.is_dir():
        ours = set(TUNE_FOLDER.names)  # what a run killed before its header leaves
        try:
            header, problem = folder.header(), None
        except ValueError:
            header, problem = None, f"has a {JOURNAL} this svdtrt cannot read (another version's)"
        if problem is None and header is None and any(p.name not in ours for p in path.iterdir()):
            problem = f"is not a tune folder (it has no {JOURNAL})"
        elif header is not None and header.identity != identity:
            problem = f"holds a tune of {_difference(header.identity, identity)}"
        if problem and not force:
            raise InputError(f"--out '{path}' {problem}; choose another folder, or pass --force to start over there")
        if problem:
            with DirectoryTransaction(path, TUNE_FOLDER, force=True) as txn:  # the old folder goes in one step
                txn.publish()
    else:
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise InputError(os_error_message(path, e)) from None
    with Lock(folder.journal.path, purpose="tune"):
        folder.journal.repair()
        if folder.header() is None:  # a new folder, or a first write a kill cut short (repair removed it)
            folder.append(Header(identity=identity, created=created))
        yield folder


def _difference(old: Identity, new: Identity) -> str:
    """What differs between two identities, in words."""
    for name, what in (("machine", f"another machine ({old.machine})"), ("config_hashes", "another model"),
                       ("reference_weights", "other fp32 weights"),
                       ("backend", f"the {old.backend} backend"), ("device", f"device {old.device}"),
                       ("threads", f"{old.threads} threads"), ("clip", "another clip size or conditioning")):
        if getattr(old, name) != getattr(new, name):
            return what
    return "other settings"
