"""Shared fixtures: the tiny preset, its exported bundle, that bundle calibrated and quantized to int8
through the CLI, and a real photograph, built once."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    from svdtrt.models.loading import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory):
    """The tiny preset exported at its default shape (4 frames, 64x64). Read-only: copy it to change it."""
    from svdtrt.export.bundle_export import export_bundle

    return export_bundle(tiny_model, tmp_path_factory.mktemp("bundles") / "tiny", progress=False)


#: Calibration of the calibrated bundle, small enough to keep the suite fast: 2 images (1 held out),
#: 3 denoising steps.
STEPS, COUNT = 3, 2


@pytest.fixture(scope="session")
def calibrated_bundle(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with calibration set 'default', made by ``svdtrt calibrate``
    (read-only: copy it to change it)."""
    from svdtrt.bundle.store import Bundle
    from svdtrt.cli.main import main

    path = tmp_path_factory.mktemp("calibrated") / "tiny"
    shutil.copytree(tiny_bundle.path, path)
    assert main(["calibrate", str(path), "--count", str(COUNT), "--steps", str(STEPS)]) == 0
    return Bundle.open(path)


@pytest.fixture(scope="session")
def int8_bundle(calibrated_bundle, tmp_path_factory):
    """The calibrated tiny bundle with int8 graphs, made by ``svdtrt quantize --precision int8``
    (read-only: copy it to change it)."""
    from svdtrt.bundle.store import Bundle
    from svdtrt.cli.main import main

    path = tmp_path_factory.mktemp("int8") / "tiny"
    shutil.copytree(calibrated_bundle.path, path)
    assert main(["quantize", str(path), "--precision", "int8"]) == 0
    return Bundle.open(path)


@pytest.fixture(scope="session")
def photo():
    """scikit-image's astronaut photograph (512x512 RGB)."""
    from svdtrt.media.images import sample_image

    return sample_image("astronaut")


@pytest.fixture
def run_cli(capsys):
    """Run the svdtrt CLI in-process: returns (exit code, stdout, stderr). The root logger's level,
    which the CLI sets for the process (INFO with -v), is restored after each command; -v's lines
    are in ``caplog``."""
    import logging

    from svdtrt.cli.main import main

    def run(*args):
        root = logging.getLogger()
        level = root.level
        try:
            code = main([str(a) for a in args])
        finally:
            root.setLevel(level)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _missing_for(marker: str) -> str | None:
    """Why tests with ``marker`` cannot run here, or None when they can."""
    import torch

    if not torch.cuda.is_available():
        return f"needs a CUDA GPU; torch {torch.__version__} sees none"
    if marker == "tensorrt":
        from svdtrt.environment import import_optional

        missing = [m for m in ("tensorrt", "polygraphy") if import_optional(m) is None]
        if missing:
            return f"needs {' and '.join(missing)} (pip install -e '.[tensorrt]'), not installed here"
    return None


def pytest_runtest_setup(item):
    """Skip ``gpu`` and ``tensorrt`` tests, with the reason, where this machine lacks what they need."""
    for marker in ("gpu", "tensorrt"):
        if item.get_closest_marker(marker):
            reason = _missing_for(marker)
            if reason:
                pytest.skip(reason)
