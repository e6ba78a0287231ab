"""A tiny bundle calibrated and quantized through the CLI, built once for the calibration tests."""

from __future__ import annotations

import shutil

import pytest

from svdtrt.bundle.store import Bundle

#: Small enough to keep the suite fast: 2 images (1 held out), 3 denoising steps.
STEPS, COUNT = 3, 2


@pytest.fixture(scope="session")
def calibrated_bundle(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with calibration set 'default', made by ``svdtrt calibrate``
    (read-only: copy it to change it)."""
    from svdtrt.cli.main import main

    path = tmp_path_factory.mktemp("calibrated") / "tiny"
    shutil.copytree(tiny_bundle.path, path)
    assert main(["calibrate", str(path), "--count", str(COUNT), "--steps", str(STEPS)]) == 0
    return Bundle.open(path)


@pytest.fixture(scope="session")
def int8_bundle(calibrated_bundle, tmp_path_factory):
    """The calibrated tiny bundle with int8 graphs, made by ``svdtrt quantize --precision int8``
    (read-only: copy it to change it)."""
    from svdtrt.cli.main import main

    path = tmp_path_factory.mktemp("int8") / "tiny"
    shutil.copytree(calibrated_bundle.path, path)
    assert main(["quantize", str(path), "--precision", "int8"]) == 0
    return Bundle.open(path)


def copy_bundle(bundle, tmp_path) -> Bundle:
    """A writable copy of ``bundle`` under ``tmp_path``."""
    shutil.copytree(bundle.path, tmp_path / "bundle")
    return Bundle.open(tmp_path / "bundle")


def snapshot(path) -> dict:
    """Every file under ``path`` with its size and mtime: what 'the bundle is unchanged' compares."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}
