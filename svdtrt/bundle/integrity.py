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
from pathlib import Path

from ..progress import ticking
from ..publishing import leftovers
from .engines import SidecarError, load_sidecar
from .manifest import MANIFEST
from .store import Bundle, sha256_file

log = logging.getLogger(__name__)


def verify_bundle(path: str | os.PathLike, progress: bool = False) -> list[str]:
    """Every problem of the bundle at ``path``, one line each; empty when it is intact.

    Leftovers of a killed svdtrt run beside the bundle (``.NAME.txn-*``) are not problems of the
    bundle; they are removed by the next command that changes it.

    Raises:
        BundleError: the bundle cannot be opened (schema, sizes; see :meth:`Bundle.open`).
    """
    from tqdm import tqdm

    bundle = Bundle.open(path)
    m = bundle.manifest
    problems = []
    start = time.perf_counter()
    bar = tqdm(m.files.items(), desc="verify", unit="file", disable=not progress)
    with ticking(bar):  # a file of gigabytes takes seconds
        for name, record in bar:
            if sha256_file(bundle.path / name) != record.sha256:
                problems.append(f"{name}: sha256 differs from the manifest's (a corrupted or replaced file); "
                                f"{bundle.remedy(name)}")
    log.info("verify: %d files, %.1f MiB, hashed in %.1f s", len(m.files),
             sum(r.bytes for r in m.files.values()) / 2**20, time.perf_counter() - start)
    on_disk = {p.relative_to(bundle.path).as_posix() for p in bundle.path.rglob("*") if not p.is_dir()}
    for name in sorted(on_disk - set(m.files) - {MANIFEST}):
        problems.append(f"{name}: on disk but not in the manifest (not svdtrt's, or left by another tool); "
                        "move it out of the bundle")
    for entry in m.engines.values():
        try:
            sidecar = load_sidecar(bundle.path / entry.sidecar)
        except SidecarError as e:
            what = "unreadable sidecar" if e.unreadable else f"sidecar version {e.version}"
            problems.append(f"{entry.sidecar}: {what}; {bundle.remedy(entry.engine)}")
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
                problems.append(f"{entry.sidecar}: {what}; {bundle.remedy(entry.engine)}")
    return problems


def leftover_runs(path: str | os.PathLike) -> list[Path]:
    """Folders that killed svdtrt runs left beside the bundle (removed by the next change)."""
    return leftovers(Path(path))
