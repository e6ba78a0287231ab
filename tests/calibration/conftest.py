"""Helpers of the calibration tests (the calibrated and int8 bundles they share with tests/graphs/
are session fixtures in tests/conftest.py)."""

from __future__ import annotations

import shutil

from svdtrt.bundle.store import Bundle


def copy_bundle(bundle, tmp_path) -> Bundle:
    """A writable copy of ``bundle`` under ``tmp_path``."""
    shutil.copytree(bundle.path, tmp_path / "bundle")
    return Bundle.open(tmp_path / "bundle")


def snapshot(path) -> dict:
    """Every file under ``path`` with its size and mtime: what 'the bundle is unchanged' compares."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}
