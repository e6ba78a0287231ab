"""``svdtrt demo``: the tiny preset and a real photograph through export, run and check."""

from __future__ import annotations

import time
from pathlib import Path

from .bundle import Bundle, write_json_atomic, writing
from .check import check_bundle
from .export import export_bundle
from .images import sample_image
from .models import load_model
from .runtime.backends import OnnxRuntimeBackend
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
    with writing(out, force) as tmp:
        image.save(tmp / "input.png")
        export_bundle(model, tmp / "bundle")
        bundle = Bundle.open(tmp / "bundle")
        frames, height, width = bundle.default_shape
        settings = SamplingSettings(frames=frames, height=height, width=width, seed=seed)
        clip = SvdPipeline(OnnxRuntimeBackend(bundle), bundle)(image, settings, progress=True)
        write_mp4(clip.frames, tmp / "clip.mp4", fps=settings.fps)
        report = check_bundle(bundle, image, settings, backend="onnxruntime", model=model)
        report["bundle"] = str(out / "bundle")
        report["demo_seconds"] = time.perf_counter() - start
        write_json_atomic(tmp / "report.json", report)
    return report
