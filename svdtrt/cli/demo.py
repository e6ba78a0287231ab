"""``svdtrt demo``: the tiny preset and a real photograph through export, run and check."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..progress import loading
from ..publishing import DirectoryTransaction, FolderKind

if TYPE_CHECKING:  # the demo's stages are imported when it runs, after its output folder is checked
    import numpy as np
    import PIL.Image

    from ..check.report import CheckReport

log = logging.getLogger(__name__)

DEMO_PRESET = "tiny"
DEMO_IMAGE = "astronaut"

#: Frames shown per row of the side-by-side picture (evenly spaced over the clip, first and last included).
PICTURE_FRAMES = 4

#: The demo's folder: what ``demo --force`` may replace.
DEMO_FOLDER = FolderKind("a demo folder", "report.json",
                         ("bundle", "clip.mp4", "input.png", "report.json", "side_by_side.png"))


def run_demo(out: str | Path, force: bool = False, seed: int = 0) -> tuple[CheckReport, float]:
    """Export ``tiny``, run it on ONNX Runtime and check it against diffusers.

    Writes ``DIR/bundle/``, ``DIR/input.png``, ``DIR/clip.mp4`` (the ONNX Runtime clip),
    ``DIR/side_by_side.png`` (:func:`side_by_side`) and ``DIR/report.json``; the directory
    appears only when all of them are complete.

    Returns:
        The check report (its ``bundle`` the published one) and the wall time of the whole demo
        in seconds (also in ``report.json`` as ``demo_seconds``).
    Raises:
        InputError: ``out`` exists and ``force`` is false, or holds something that is not a demo
            folder (:data:`DEMO_FOLDER`); checked before anything is loaded.
    """
    start = time.perf_counter()
    out = Path(out)
    DEMO_FOLDER.check_target(out, force)  # before seconds of imports and the model
    with loading("demo", "PyTorch, diffusers, the ONNX exporter and ONNX Runtime", log):
        from ..check.compare import check_bundle
        from ..export.bundle_export import export_bundle
        from ..media.images import sample_image
        from ..media.video import write_mp4
        from ..models.loading import load_model
        from ..runtime.settings import SamplingSettings

    model = load_model(DEMO_PRESET)
    image = sample_image(DEMO_IMAGE)
    with DirectoryTransaction(out, DEMO_FOLDER, force=force) as txn:
        image.save(txn.path / "input.png")
        bundle = export_bundle(model, txn.path / "bundle")
        frames, height, width = bundle.default_shape
        settings = SamplingSettings(frames=frames, height=height, width=width, seed=seed)
        # The check runs the ONNX Runtime clip; the demo keeps it rather than sampling it twice.
        report = check_bundle(bundle, image, settings, backend="onnxruntime", model=model, progress=True)
        write_mp4(report.tested_frames, txn.path / "clip.mp4", fps=settings.fps)
        side_by_side(image, report.tested_frames, report.reference_frames).save(txn.path / "side_by_side.png")
        report = dataclasses.replace(report, bundle=str(out / "bundle"))
        seconds = time.perf_counter() - start
        report_json = {**report.to_json(), "demo_seconds": seconds}
        (txn.path / "report.json").write_text(json.dumps(report_json, indent=2) + "\n")
        txn.publish()
    return report, seconds


def demo(args) -> int:
    """``svdtrt demo``: :func:`run_demo` into ``--out``, its report printed as ``check`` prints
    one; exit code 0, or 1 where the check failed."""
    from ..bundle.store import Bundle
    from .clip_commands import print_random_weights, print_report

    report, seconds = run_demo(args.out, args.force)
    print_report(report)
    print(f"demo written to {args.out}/ in {seconds:.1f} s: clip.mp4 (the ONNX Runtime clip), "
          "side_by_side.png (input, ONNX Runtime and diffusers frames, their difference), report.json, bundle/")
    print_random_weights(Bundle.open(args.out / "bundle"))
    return 0 if report.passed else 1


def side_by_side(image: PIL.Image.Image, tested: np.ndarray, reference: np.ndarray, count: int = PICTURE_FRAMES,
                 tested_label: str = "ONNX Runtime", reference_label: str = "diffusers") -> PIL.Image.Image:
    """One picture of the parity claim: the input photo, then rows of ``count`` frames of the
    tested clip, of the reference clip, and of their per-frame absolute difference.

    Args:
        image: the conditioning photo (shown at the clip's height).
        tested, reference: float32 [F, H, W, 3] in [0, 1], of the same shape.
        count: frames per row, evenly spaced over the clip.
    Returns:
        An RGB image. The difference row is amplified x255 (so one 8-bit step is full white) and
        labelled with each frame's PSNR in dB (``svdtrt.media.metrics.psnr``, data range 1): a black
        row means the clips are the same to within 1/65025 per pixel.
    """
    import numpy as np
    import PIL.Image
    import PIL.ImageDraw

    from ..media.metrics import psnr
    from ..media.video import to_uint8

    frames, height, width = tested.shape[:3]
    scale = max(1, 128 // max(height, width))  # tiny clips are 64x64: make them visible
    h, w = height * scale, width * scale
    picks = sorted({round(i * (frames - 1) / max(1, count - 1)) for i in range(count)})
    label_w, pad, text_h = 110, 4, 14
    photo = image.convert("RGB").resize((round(image.width * h / image.height), h))
    canvas = PIL.Image.new("RGB", (label_w + max(photo.width, len(picks) * (w + pad)),
                                   4 * (h + text_h + pad)), "white")
    draw = PIL.ImageDraw.Draw(canvas)

    def row(y, label, tiles, captions):
        draw.text((4, y + h // 2), label, fill="black")
        for i, (tile, caption) in enumerate(zip(tiles, captions)):
            x = label_w + i * (w + pad)
            canvas.paste(tile, (x, y))
            draw.text((x, y + h + 1), caption, fill="black")

    def tiles(clip):
        return [PIL.Image.fromarray(to_uint8(clip[i])).resize((w, h), PIL.Image.NEAREST) for i in picks]

    difference = np.abs(tested.astype(np.float64) - reference.astype(np.float64))
    amplified = [PIL.Image.fromarray(np.clip(difference[i] * 255 * 255, 0, 255).astype(np.uint8)).resize(
        (w, h), PIL.Image.NEAREST) for i in picks]
    step = h + text_h + pad
    canvas.paste(photo, (label_w, 0))
    draw.text((4, h // 2), "input photo", fill="black")
    row(step, tested_label, tiles(tested), [f"frame {i}" for i in picks])
    row(2 * step, reference_label, tiles(reference), [f"frame {i}" for i in picks])
    row(3 * step, "|difference| x255", amplified, [f"{psnr(tested[i], reference[i]):.0f} dB" for i in picks])
    return canvas
