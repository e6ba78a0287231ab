"""The ``svdtrt`` command line.

Every :class:`SvdtrtError` becomes one line on stderr and exit code 2; a missed accuracy
threshold in ``check`` is exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import InputError, SvdtrtError

log = logging.getLogger("svdtrt")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        self.exit(2, f"svdtrt: error: {message} (see '{self.prog} --help')\n")


def _size_range(text: str) -> tuple[int, int, int]:
    """``N`` or ``MIN:OPT:MAX`` -> (min, opt, max)."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not N or MIN:OPT:MAX") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not parts[0] <= parts[1] <= parts[2]:
        raise argparse.ArgumentTypeError(f"'{text}' is not N or MIN:OPT:MAX with MIN <= OPT <= MAX")
    if parts[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be at least 1, got '{text}'")
    return tuple(parts)


def _sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the bundle's shape and diffusers' pipeline defaults)")
    g.add_argument("--seed", type=int, default=0, help="seed of the CPU torch.Generator (default 0)")
    g.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    g.add_argument("--frames", type=int, help="frames of the clip")
    g.add_argument("--height", type=int, help="clip height in pixels")
    g.add_argument("--width", type=int, help="clip width in pixels")
    g.add_argument("--fps", type=int, default=7, help="frames per second (conditioning and mp4; default 7)")
    g.add_argument("--motion-bucket-id", type=int, default=127, help="motion conditioning (default 127)")
    g.add_argument("--noise-aug-strength", type=float, default=0.02, help="conditioning noise (default 0.02)")
    g.add_argument("--min-guidance-scale", type=float, default=1.0, help="guidance at the first frame (default 1)")
    g.add_argument("--max-guidance-scale", type=float, default=3.0, help="guidance at the last frame (default 3)")
    g.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call (default: all)")


def _backend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"),
                   help="what runs the components (default onnxruntime)")
    p.add_argument("--precision", default="fp32", help="graph precision to run (default fp32)")
    p.add_argument("--model", help="source model for the torch backend and the reference "
                                   "(default: the one recorded in the bundle's manifest)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="svdtrt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("export", help="export a model's four components to a bundle of ONNX graphs")
    p.add_argument("model", metavar="MODEL", help="diffusers SVD directory, hub id, or preset (tiny, small)")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    p.add_argument("--frames", type=_size_range, help="frames: N or MIN:OPT:MAX (default: the model's)")
    p.add_argument("--height", type=_size_range, help="height in pixels: N or MIN:OPT:MAX")
    p.add_argument("--width", type=_size_range, help="width in pixels: N or MIN:OPT:MAX")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--variant", help="weights variant of a directory or hub model, e.g. fp16")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")

    p = sub.add_parser("run", help="make a clip from an image with a bundle")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--image", required=True, type=Path, help="conditioning image (PNG, JPEG, ...)")
    p.add_argument("--out", required=True, type=Path, help="mp4 file to write")
    p.add_argument("--save-frames", type=Path, help="also save float32 [F, H, W, 3] frames in [0, 1] as .npy")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    _backend_options(p)
    _sampling_options(p)

    p = sub.add_parser("check", help="measure a bundle's accuracy against PyTorch and diffusers")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--image", required=True, type=Path, help="conditioning image")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    _backend_options(p)
    _sampling_options(p)

    p = sub.add_parser("bench", help="latency, memory and accuracy of every backend and precision vs diffusers")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--backends", help="comma-separated: torch,onnxruntime,tensorrt (default: all; "
                                      "those this machine cannot run are reported as skipped)")
    p.add_argument("--precisions", help="comma-separated: fp32,fp16,int8,fp8 (default: those in the bundle)")
    p.add_argument("--warmup", type=int, default=1, help="clips run before measuring, per row (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="clips measured per row (default 3)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="where diffusers' reference and the torch backend run (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads of PyTorch and of each ONNX Runtime session "
                                               "(default: each library's own)")
    p.add_argument("--image", type=Path, help="conditioning image (default: scikit-image's astronaut photo)")
    p.add_argument("--model", help="source model (default: the one recorded in the bundle's manifest)")
    p.add_argument("--out", type=Path, default=Path("svdtrt-bench"),
                   help="directory to create: results.json, results.md, stages.png, tradeoff.png "
                        "(default svdtrt-bench)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    _sampling_options(p)

    p = sub.add_parser("demo", help="export the tiny preset, run it on a real photo and check it")
    p.add_argument("--out", type=Path, default=Path("svdtrt-demo"), help="directory to create (default svdtrt-demo)")
    p.add_argument("--force", action="store_true", help="replace an existing directory")
    return parser


def _settings(args, bundle):
    from .runtime.pipeline import SamplingSettings

    frames, height, width = bundle.default_shape
    settings = SamplingSettings(
        frames=args.frames or frames, height=args.height or height, width=args.width or width,
        steps=args.steps, fps=args.fps, motion_bucket_id=args.motion_bucket_id,
        noise_aug_strength=args.noise_aug_strength, min_guidance_scale=args.min_guidance_scale,
        max_guidance_scale=args.max_guidance_scale, decode_chunk_size=args.decode_chunk_size, seed=args.seed,
    )
    settings.check(bundle.dims)
    return settings


def _cmd_export(args) -> int:
    from .bundle import check_writable
    from .export import export_bundle
    from .models import load_model

    check_writable(args.out, args.force)  # before the (possibly long) model load
    model = load_model(args.model, variant=args.variant)
    bundle = export_bundle(model, args.out, args.frames, args.height, args.width, args.opset, args.force)
    print(f"bundle written to {bundle.path}")
    for name, entry in bundle.manifest["components"].items():
        g = entry["graphs"]["fp32"]
        worst = max(m["rel_error"] for m in g["validation"]["outputs"].values())
        print(f"  {name:14s} {g['bytes'] / 2**20:9.1f} MiB  exported in {g['export_seconds']:6.1f} s  "
              f"max rel error vs PyTorch {worst:.2e}")
    return 0


def _print_timings(timings: dict) -> None:
    rows = [("VAE encode", "vae_encode"), ("CLIP", "clip"), ("UNet x steps", "unet"),
            ("  per step", "unet_per_step"), ("VAE decode", "vae_decode"), ("total", "total")]
    for label, key in rows:
        if key in timings:
            print(f"  {label:14s} {timings[key]:8.3f} s")


def _open_backend(args, bundle):
    from .models import load_model
    from .runtime.backends import create_backend

    model = load_model(args.model) if args.model else None
    return create_backend(args.backend, bundle, args.precision, model=model), model


def _cmd_run(args) -> int:
    from .bundle import Bundle, check_writable
    from .images import load_image
    from .runtime.pipeline import SvdPipeline
    from .runtime.video import save_frames, write_mp4

    for path in (args.out, args.save_frames):
        if path:
            check_writable(path, args.force)
    bundle = Bundle.open(args.bundle)
    image = load_image(args.image)
    settings = _settings(args, bundle)
    backend, _ = _open_backend(args, bundle)
    clip = SvdPipeline(backend, bundle)(image, settings, progress=True)
    write_mp4(clip.frames, args.out, fps=settings.fps)
    if args.save_frames:
        save_frames(clip.frames, args.save_frames)
    print(f"{settings.frames} frames of {settings.width}x{settings.height} written to {args.out} "
          f"({args.backend}, {args.precision})")
    _print_timings(clip.timings)
    return 0


def _cmd_check(args) -> int:
    from .bundle import Bundle, check_writable, write_json_atomic
    from .check import check_bundle
    from .images import load_image
    from .models import load_model

    if args.report:
        check_writable(args.report, args.force)
    bundle = Bundle.open(args.bundle)
    image = load_image(args.image)
    settings = _settings(args, bundle)
    model = load_model(args.model) if args.model else None
    report = check_bundle(bundle, image, settings, args.backend, args.precision, model=model, progress=True)
    if args.report:
        write_json_atomic(args.report, report)
    _print_report(report)
    return 0 if report["passed"] else 1


def _print_report(report: dict) -> None:
    print(f"accuracy of {report['backend']} ({report['precision']}) against PyTorch:")
    for name, outputs in report["components"].items():
        for out, m in outputs.items():
            extra = f"  PSNR {m['psnr_db']:.1f} dB" if "psnr_db" in m else ""
            print(f"  {name + '.' + out:28s} max abs {m['max_abs_error']:.2e}  cosine {m['cosine']:.8f}{extra}")
    e2e = report["end_to_end"]["vs_diffusers"]
    print(f"  clip vs diffusers: PSNR min {e2e['min_psnr_db']:.1f} dB, mean {e2e['mean_psnr_db']:.1f} dB; "
          f"SSIM min {e2e['min_ssim']:.6f}")
    print("PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"]))


def _cmd_demo(args) -> int:
    from .demo import run_demo

    report = run_demo(args.out, args.force)
    _print_report(report)
    print(f"demo written to {args.out}/ (clip.mp4, report.json, bundle/) in {report['demo_seconds']:.1f} s")
    return 0 if report["passed"] else 1


def _cmd_bench(args) -> int:
    import shlex

    import torch

    from .benchmark import BACKENDS, PRECISIONS, markdown, parse_names, run_benchmark, write_results
    from .bundle import Bundle, check_writable
    from .check import source_model
    from .images import load_image, sample_image
    from .models import load_model

    backends = parse_names(args.backends, BACKENDS, "backend")
    precisions = parse_names(args.precisions, PRECISIONS, "precision")
    check_writable(args.out, args.force)  # before minutes of measuring
    bundle = Bundle.open(args.bundle)
    image = load_image(args.image) if args.image else sample_image()
    settings = _settings(args, bundle)
    model = source_model(bundle, load_model(args.model) if args.model else None)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = run_benchmark(bundle, image, settings, model, backends, precisions, args.warmup, args.repeat,
                            device, args.threads, command=shlex.join(["svdtrt", *args.argv]), progress=True)
    write_results(results, args.out, args.force)
    print(markdown(results), end="")
    print(f"results written to {args.out}/ in {results['seconds']:.1f} s")
    return 0


COMMANDS = {"export": _cmd_export, "run": _cmd_run, "check": _cmd_check, "bench": _cmd_bench, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # recorded by bench
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except SvdtrtError as e:
        print(f"svdtrt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("svdtrt: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


def _quiet_libraries(verbose: bool) -> None:
    """Silence the libraries' advisory warnings (e.g. transformers' torchvision notice) unless -v."""
    if verbose:
        return
    import warnings

    warnings.filterwarnings("ignore")
    import transformers
    import diffusers

    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
