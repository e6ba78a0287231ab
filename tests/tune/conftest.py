"""Fixtures of the tune tests: a small space on the tiny bundle (SVD's Euler at 40, 25, 12 and 6
steps, no caching, guidance on every step) over two tuning photos and one held-out photo, tuned
once through the CLI with ``--apply``.

On tiny (random weights) 12 steps keep about 36 dB and 6 steps about 25 dB against the 25-step
reference, so a 30 dB floor has one clear answer; 40 steps costs 1.6 times the reference, so the
search never measures it. Clip times differ by 1.4x or more between neighbours; that is not
always beyond the timing noise of a shared 2-core machine across runs (CI once timed the reference
slower than 40 steps), so the answers hold by counted work where timing cannot decide
(svdtrt/tune/search.py: ``answer``)."""

from __future__ import annotations

import shutil

import pytest

SPACE = ("--schedulers", "euler:40,euler:25,euler:12,euler:6", "--cache-interval", "1", "--guidance-steps", "all")
FLOOR = ("--min-psnr", "30")


@pytest.fixture(scope="session")
def tune_images(tmp_path_factory):
    """Folders of tuning images (astronaut, coffee) and held-out images (rocket), as PNG files."""
    from svdtrt.media.images import sample_image

    root = tmp_path_factory.mktemp("tune-images")
    for folder, names in (("tuning", ("astronaut", "coffee")), ("held-out", ("rocket",))):
        (root / folder).mkdir()
        for name in names:
            sample_image(name).save(root / folder / f"{name}.png")
    return root / "tuning", root / "held-out"


def tune_args(bundle, out, images, *more) -> list[str]:
    """``svdtrt tune`` of :data:`SPACE` at :data:`FLOOR` on ``images`` (tuning, held-out folders)."""
    return ["tune", str(bundle), *FLOOR, *SPACE, "--images", str(images[0]), "--held-out", str(images[1]),
            "--out", str(out), *more]


@pytest.fixture(scope="session")
def tuned(tiny_bundle, tune_images, tmp_path_factory):
    """A copy of the tiny bundle tuned with ``--apply`` and the tune's folder: (bundle path, out
    path). Read-only: copy them to change them."""
    from svdtrt.cli.main import main

    root = tmp_path_factory.mktemp("tuned")
    bundle = shutil.copytree(tiny_bundle.path, root / "tiny")
    assert main(tune_args(bundle, root / "tune", tune_images, "--apply")) == 0
    return bundle, root / "tune"
