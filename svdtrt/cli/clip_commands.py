"""The commands that make clips in this process: ``run`` (a clip from an image) and ``check`` (a
bundle's clip and components against PyTorch and diffusers), and how their results are printed."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from ..errors import InputError
from ..progress import loading
from ..publishing import FileKind
from .args import BACKEND, DEVICE_MEMORY, PROFILE, SAMPLING, WORK

if TYPE_CHECKING:  # the CLI imports the check stage only when a command runs it
    from ..check.report import CheckReport

log = logging.getLogger(__name__)


def run(args) -> int:
    """``svdtrt run``: one clip (and, if asked, its frames and timings) from an image; exit code 0.
    Every check (output names, bundle, image, settings, host and device memory) comes before the outputs are
    reserved, and those before the model, the backend and sampling."""
    import json
    from dataclasses import asdict

    with loading("run", "PyTorch, diffusers and ONNX Runtime", log):
        from ..bundle.store import Bundle
        from ..media.images import load_image
        from ..media.video import CLIP_FILE, FRAMES_FILE, check_clip_path, check_frames_path, save_frames, write_clip
        from ..models.loading import load_model, reference_model
        from ..runtime.backends import create_backend
        from ..runtime.pipeline import SvdPipeline

    clip_format = check_clip_path(args.out)
    if args.save_frames:
        check_frames_path(args.save_frames)
    outputs = [("--out", args.out), ("--save-frames", args.save_frames), ("--timings", args.timings)]
    named = [(flag, os.path.abspath(path)) for flag, path in outputs if path]
    for i, (flag, path) in enumerate(named):
        for other, other_path in named[:i]:
            if path == other_path:
                raise InputError(f"{other} and {flag} are both '{path}'; give each output its own file name")
    bundle = Bundle.open(args.bundle)
    image = load_image(args.image)
    profile = PROFILE.parse(args, bundle)
    choice = BACKEND.parse(args, profile)
    settings = SAMPLING.parse(args, bundle, WORK.parse(args), profile)
    SAMPLING.before_sampling(bundle, settings, [(choice.backend, choice.precision, choice.device)])
    DEVICE_MEMORY.check(args, bundle, settings, choice)
    # Reserved before the model, the backend and sampling: an unwritable or taken path fails now,
    # not after minutes of work.
    with _reserved(args.force, (args.out, CLIP_FILE), (args.save_frames, FRAMES_FILE),
                   (args.timings, TIMINGS_FILE)) as (clip_out, frames_out, timings_out):
        model = reference_model(bundle, load_model(choice.model)) if choice.model else None
        backend = create_backend(choice.backend, bundle, choice.precision, model=model, **choice.options)
        clip = SvdPipeline(backend, bundle)(image, settings, progress=True, timings=bool(args.timings))
        clip_out.write(lambda part: write_clip(clip.frames, part, fps=settings.fps, suffix=clip_format))
        if frames_out:
            frames_out.write(lambda part: save_frames(clip.frames, part))
            frames_out.publish()
        if timings_out:
            from ..models.flops import clip_unet_flops

            work = clip_unet_flops(bundle.manifest.configs["unet"], bundle.dims, clip.unet_calls, settings.frames,
                                   settings.height, settings.width)
            record = {"backend": choice.backend, "precision": choice.precision, "settings": asdict(settings),
                      "seconds": clip.timings, "unet_calls": work["unet_calls"], "unet_flops": work["unet_flops"],
                      "unet_graphs": work["graphs"]}
            timings_out.write(lambda part: part.write_text(json.dumps(record, indent=2) + "\n"))
            timings_out.publish()
        clip_out.publish()
    print(f"{settings.frames} frames of {settings.width}x{settings.height} written to {args.out} "
          f"({choice.backend}, {choice.precision}; {settings.scheduler}, {settings.steps} steps, "
          f"{_work_summary(settings)}, {len(clip.unet_calls)} UNet calls)")
    print_random_weights(bundle)
    _print_timings(clip.timings)
    return 0


def check(args) -> int:
    """``svdtrt check``: the bundle's clip and components against PyTorch and diffusers, printed
    and, with ``--report``, written as JSON; exit code 0, or 1 where a threshold is missed."""
    import json

    from ..precisions import precision as lookup_precision

    with loading("check", "PyTorch, diffusers and ONNX Runtime", log):
        from ..bundle.store import Bundle
        from ..check.compare import check_bundle
        from ..media.images import load_image, sample_image
        from ..models.loading import load_model, reference_model

    with _reserved(args.force, (args.report, REPORT_FILE)) as (report_out,):  # before minutes of work
        bundle = Bundle.open(args.bundle)
        image = load_image(args.image) if args.image else sample_image()
        choice = BACKEND.parse(args)
        settings = SAMPLING.parse(args, bundle, WORK.parse(args))
        # the tested, the PyTorch and diffusers' clips, and the fp32 graphs' for a quantized precision
        clips = 4 if lookup_precision(choice.precision).quantized and choice.backend == "onnxruntime" else 3
        SAMPLING.before_sampling(bundle, settings, [(choice.backend, choice.precision, choice.device)],
                                 reference=True, clips=clips)
        model = reference_model(bundle, load_model(choice.model)) if choice.model else None
        report = check_bundle(bundle, image, settings, choice.backend, choice.precision, model=model, progress=True,
                              backend_options=choice.options)
        if report_out:
            report_out.write(lambda part: part.write_text(json.dumps(report.to_json(), indent=2) + "\n"))
            report_out.publish()
    print_report(report)
    return 0 if report.passed else 1


#: The JSON files ``run --timings`` and ``check --report`` write, as ``--force`` recognises them
#: (by keys every such file has; a bundle's manifest, say, has none of them).
TIMINGS_FILE = FileKind.json_object_with("a timings file", "backend", "precision", "seconds", "unet_calls")
REPORT_FILE = FileKind.json_object_with("a check report", "backend", "precision", "components", "end_to_end")


@contextlib.contextmanager
def _reserved(force: bool, *outputs_and_kinds):
    """An :class:`~svdtrt.publishing.OutputFile` per ``(path, kind)`` (None for a None path),
    reserved in order; every reserved part file is removed when a later reservation or the block
    fails or is interrupted, so that nothing half-written is left."""
    from ..publishing import OutputFile

    outputs = []
    try:
        for path, kind in outputs_and_kinds:
            outputs.append(OutputFile(path, kind, force) if path else None)
        yield outputs
    except BaseException:
        for out in outputs:
            if out is not None:
                out.discard()
        raise


def _work_summary(settings) -> str:
    """The guidance and block-caching settings a clip was made with, as ``run`` prints them."""
    if settings.max_guidance_scale <= 1:
        guidance = "no guidance"
    else:
        every = settings.guidance_steps is None or settings.guidance_steps >= settings.steps
        on = "every step" if every else f"the first {settings.guidance_steps} steps"
        guidance = f"guidance {settings.min_guidance_scale:g} to {settings.max_guidance_scale:g} on {on}"
    caching = "no block caching" if settings.cache_interval == 1 else f"cache interval {settings.cache_interval}"
    return f"{guidance}, {caching}"


def _print_timings(timings: dict) -> None:
    """``run``'s seconds per stage (:attr:`svdtrt.runtime.pipeline.Clip.timings`)."""
    rows = [("VAE encode", "vae_encode"), ("CLIP", "clip"), ("UNet x steps", "unet"),
            ("  per step", "unet_per_step"), ("VAE decode", "vae_decode"), ("total", "total")]
    for label, key in rows:
        if key in timings:
            print(f"  {label:14s} {timings[key]:8.3f} s")


def print_random_weights(bundle) -> None:
    """Say so when the bundle's model has seeded random weights: its clips are not videos of the photo."""
    note = bundle.manifest.source.random_weights_note()
    if note:
        print(f"note: {note}")


def print_report(report: CheckReport) -> None:
    """A :class:`~svdtrt.check.report.CheckReport` as ``check`` and ``demo`` print it."""
    print(f"accuracy of {report.backend} ({report.precision}) against PyTorch:")
    for name, outputs in report.components.items():
        for out, m in outputs.items():
            extra = f"  PSNR {m['psnr_db']:.1f} dB" if "psnr_db" in m else ""
            print(f"  {name + '.' + out:28s} max abs {m['max_abs_error']:.2e}  cosine {m['cosine']:.8f}{extra}")
    e2e = report.end_to_end.vs_diffusers
    print(f"  clip vs diffusers: PSNR min {e2e['min_psnr_db']:.1f} dB, mean {e2e['mean_psnr_db']:.1f} dB; "
          f"SSIM min {e2e['min_ssim']:.6f}")
    if report.end_to_end.vs_fp32_graphs is not None:
        e = report.end_to_end.vs_fp32_graphs
        print(f"  clip vs fp32 graphs: PSNR min {e['min_psnr_db']:.1f} dB, mean {e['mean_psnr_db']:.1f} dB; "
              f"SSIM min {e['min_ssim']:.6f}")
    print("PASSED" if report.passed else "FAILED: " + "; ".join(report.failures))
