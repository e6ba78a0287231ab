"""``svdtrt verify``: every file of a bundle against the sha256 its manifest records, the folder
against the manifest (nothing missing, nothing extra), and every engine's sidecar against its
engine and graph (docs/architecture.md, "Integrity").

Opening a bundle checks the manifest's schema and every file's size (:meth:`Bundle.open`);
this checks the content too, reading every byte once (seconds per GB).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError, first_line
from ..progress import ticking
from ..publishing import leftovers
from .engines import SidecarError, load_sidecar
from .manifest import MANIFEST
from .repair import Repair
from .store import Bundle, not_a_bundle, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verification:
    """What ``verify`` found: ``problems``, one line each (empty when the bundle is intact), and
    ``repair``, what rebuilds the damaged files and keeps the rest (None when no listed file is
    damaged, or when the manifest itself cannot be read: its problem line says what to do)."""

    problems: list[str]
    repair: Repair | None


def verify_bundle(path: str | os.PathLike, progress: bool = False) -> list[str]:
    """Every problem of the bundle at ``path``, one line each; empty when it is intact (see
    :func:`verify`, which also says how to repair them)."""
    return verify(path, progress).problems


def verify(path: str | os.PathLike, progress: bool = False) -> Verification:
    """Every problem of the bundle at ``path``, and the one command line that repairs them.

    A folder holding ``manifest.json`` is a bundle, so everything wrong with one (a manifest that
    cannot be read, a missing file, a file of another size or content, a file the manifest does
    not list, a stale sidecar) is a problem of the result, not an exception. Leftovers of a killed
    svdtrt run beside the bundle (``.NAME.txn-*``) are not problems of the bundle; they are
    removed by the next command that changes it.

    Raises:
        BundleError: ``path`` is not a bundle (missing, a file, or a folder without
            ``manifest.json``); the message says where to export one.
    """
    from tqdm import tqdm

    path = Path(path)
    if not path.is_dir() or not os.path.lexists(path / MANIFEST):
        raise BundleError(not_a_bundle(path))
    try:
        bundle = Bundle.open(path, complete=False)
    except BundleError as e:  # the manifest itself: nothing else can be checked against it
        return Verification([first_line(e)], None)
    m = bundle.manifest
    damaged = dict(bundle.file_problems())
    problems = list(damaged.values())
    start = time.perf_counter()
    bar = tqdm(m.files.items(), desc="verify", unit="file", disable=not progress)
    with ticking(bar):  # a file of gigabytes takes seconds
        for name, record in bar:
            if name not in damaged and sha256_file(bundle.path / name) != record.sha256:
                damaged[name] = f"{name}: sha256 differs from the manifest's (a corrupted or replaced file)"
                problems.append(damaged[name])
    log.info("verify: %d files, %.1f MiB, hashed in %.1f s", len(m.files),
             sum(r.bytes for r in m.files.values()) / 2**20, time.perf_counter() - start)
    on_disk = {p.relative_to(bundle.path).as_posix() for p in bundle.path.rglob("*") if not p.is_dir()}
    for name in sorted(on_disk - set(m.files) - {MANIFEST}):
        problems.append(f"{name}: on disk but not in the manifest (not svdtrt's, or left by another tool); "
                        "move it out of the bundle")
    for entry in m.engines.values():
        if entry.engine in damaged or entry.sidecar in damaged:
            continue
        try:
            sidecar = load_sidecar(bundle.path / entry.sidecar)
        except SidecarError as e:
            what = "unreadable sidecar" if e.unreadable else f"sidecar version {e.version}"
            damaged[entry.sidecar] = f"{entry.sidecar}: {what}"
            problems.append(damaged[entry.sidecar])
            continue
        engine_record = m.files[entry.engine]
        checks = [
            ((sidecar.component, sidecar.precision) == (entry.component, entry.precision),
             f"it describes {sidecar.component} {sidecar.precision}"),
            ((sidecar.engine.bytes, sidecar.engine.sha256) == (engine_record.bytes, engine_record.sha256),
             "it describes another engine file"),
            (sidecar.graph.sha256 == bundle.graph_identity(entry.component, entry.precision),
             "the engine was built from another graph"),
        ]
        for ok, what in checks:
            if not ok:
                damaged[entry.sidecar] = f"{entry.sidecar}: {what}"
                problems.append(damaged[entry.sidecar])
    return Verification(problems, bundle.repair(list(damaged)) if damaged else None)


def leftover_runs(path: str | os.PathLike) -> list[Path]:
    """Folders that killed svdtrt runs left beside the bundle (removed by the next change)."""
    return leftovers(Path(path))
