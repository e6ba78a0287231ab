"""``svdtrt demo``: the tiny preset and a real photograph through export, run and check."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .check import check_bundle
from .export import export_bundle
from .fs import DirectoryTransaction
from .images import sample_image
from .models import load_model
from .runtime.backends import create_backend
from .runtime.pipeline import SamplingSettings, SvdPipeline
from .runtime.video import write_mp4

DEMO_PRESET = "tiny"
DEMO_IMAGE = "astronaut"


def run_demo(out: str | Path, force: bool = False, seed: int = 0) -> dict:
    """Export ``tiny``, run it on ONNX Runtime and check it against diffusers.

    Writes ``DIR/bundle/``, ``DIR/input.png``, ``DIR/clip.mp4`` and ``DIR/report.json``;
    the directory appears only when all of them are complete.

    Returns:
        The check report, with ``demo_seconds`` (wall time of the whole demo) added.
    Raises:
        InputError: ``out`` exists and ``force`` is false.
    """
    start = time.perf_counter()
    out = Path(out)
    model = load_model(DEMO_PRESET)
    image = sample_image(DEMO_IMAGE)
    with DirectoryTransaction(out, force=force) as txn:
        image.save(txn.path / "input.png")
        bundle = export_bundle(model, txn.path / "bundle")
        frames, height, width = bundle.default_shape
        settings = SamplingSettings(frames=frames, height=height, width=width, seed=seed)
        clip = SvdPipeline(create_backend("onnxruntime", bundle), bundle)(image, settings, progress=True)
        write_mp4(clip.frames, txn.path / "clip.mp4", fps=settings.fps)
        report = check_bundle(bundle, image, settings, backend="onnxruntime", model=model)
        report["bundle"] = str(out / "bundle")
        report["demo_seconds"] = time.perf_counter() - start
        (txn.path / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        txn.publish()
    return report
