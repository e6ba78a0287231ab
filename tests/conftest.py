"""Shared fixtures: the tiny preset, its exported bundle and a real photograph, built once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    from svdtrt.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory):
    """The tiny preset exported at its default shape (4 frames, 64x64). Read-only: copy it to change it."""
    from svdtrt.export import export_bundle

    return export_bundle(tiny_model, tmp_path_factory.mktemp("bundles") / "tiny", progress=False)


@pytest.fixture(scope="session")
def photo():
    """scikit-image's astronaut photograph (512x512 RGB)."""
    from svdtrt.images import sample_image

    return sample_image("astronaut")


@pytest.fixture
def run_cli(capsys):
    """Run the svdtrt CLI in-process: returns (exit code, stdout, stderr)."""
    from svdtrt.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
