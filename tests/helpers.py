"""Test helpers for changing a bundle copy on purpose.

A bundle's manifest records the size and sha256 of every file, so a test that edits a file
(or the manifest) by hand must record the change too, or expect ``Bundle.open`` / ``svdtrt
verify`` to notice it. :func:`rerecord` does what the bundle's writers do at commit: it
records the given files again (and drops or adds records so that ``files`` lists exactly the
files the manifest refers to).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from svdtrt.bundle import manifest as schema
from svdtrt.bundle.store import Bundle, sha256_file


def rerecord(path, *names: str, edit: Callable[[schema.Manifest], None] | None = None) -> Bundle:
    """Re-record files ``names`` of the bundle at ``path`` in its manifest, after ``edit(manifest)``
    if given; returns the re-opened bundle."""
    path = Path(path)
    m = schema.parse((path / schema.MANIFEST).read_bytes(), str(path))
    if edit is not None:
        edit(m)
    used = m.referenced_files()
    files = {k: v for k, v in m.files.items() if k in used}
    for name in sorted(set(names) | (used - set(files))):
        files[name] = schema.FileRecord(bytes=(path / name).stat().st_size, sha256=sha256_file(path / name))
    m.files = dict(sorted(files.items()))
    (path / schema.MANIFEST).write_bytes(schema.dump(m))
    return Bundle.open(path)
