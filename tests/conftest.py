"""Shared fixtures: the tiny preset, its exported bundle and a real photograph, built once."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def photo():
    """scikit-image's astronaut photograph (512x512 RGB)."""
    from svdtrt.media.images import sample_image

    return sample_image("astronaut")


@pytest.fixture
def run_cli(capsys):
    """Run the svdtrt CLI in-process: returns (exit code, stdout, stderr)."""
    from svdtrt.cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
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
