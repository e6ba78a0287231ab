"""The ``svdtrt`` command line.

Every :class:`SvdtrtError` becomes one line on stderr and exit code 2; a missed accuracy
threshold in ``check`` is exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from ..errors import InputError, SvdtrtError
from .args import BACKEND, BUILD_SHAPES, EXPORT_SHAPES, REPLICAS, SAMPLING, WORK, WORK_LISTS, WORKERS
from .parser import build_parser

log = logging.getLogger("svdtrt")


@contextlib.contextmanager
def _reserved(force: bool, *paths):
    """An :class:`~svdtrt.publishing.OutputFile` per path (None for None), reserved in order;
    every reserved part file is removed when a later reservation or the block fails or is
    interrupted, so that nothing half-written is left."""
    from ..publishing import OutputFile

    outputs = []
    try:
        for path in paths:
            outputs.append(OutputFile(path, force) if path else None)
        yield outputs
    except BaseException:
        for out in outputs:
            if out is not None:
                out.discard()
        raise


def _cmd_export(args) -> int:
    from ..export.bundle_export import export_bundle
    from ..models.loading import load_model

    if os.path.lexists(args.out) and not args.force and not (args.components and args.out.is_dir()):
        raise InputError(f"'{args.out}' already exists; choose another path, pass --force to replace it, "
                         "or --components to re-export some components into it")  # before the model load
    model = load_model(args.model, variant=args.variant, random_weights=args.random_weights)
    precisions = ("fp32", "fp16") if args.precision == "fp16" else ("fp32",)
    bundle = export_bundle(model, args.out, *EXPORT_SHAPES.parse(args), args.opset, args.force,
                           components=args.components, precisions=precisions, release_weights=True,
                           cache_depth=args.cache_depth, cache_layer=args.cache_layer)
    print(f"bundle written to {bundle.path}")
    _print_graphs(bundle, args.components)
    return 0


def _print_graphs(bundle, components=None, precisions=None) -> None:
    for name, entry in bundle.manifest.components.items():
        if components and name not in components:
            continue
        for precision, g in entry.graphs.items():
            if (precisions and precision not in precisions) or g.validation is None:
                continue
            outputs = g.validation.outputs.values()
            print(f"  {name:14s} {precision}  {g.bytes / 2**20:9.1f} MiB  {g.seconds or 0.0:6.1f} s  "
                  f"vs {g.validation.reference}: cosine {min(m['cosine'] for m in outputs):.6f}, "
                  f"PSNR {min(m['psnr_db'] for m in outputs):.1f} dB")
        if entry.fixed_axes:
            print(f"  {name:14s} axes fixed in the graph: {', '.join(entry.fixed_axes)}")


def _cmd_convert(args) -> int:
    from ..export.convert import convert_bundle

    bundle = convert_bundle(args.bundle, args.precision, args.force)
    print(f"{args.precision} graphs written to {bundle.path}")
    _print_graphs(bundle, precisions=[args.precision])
    return 0


def _cmd_verify(args) -> int:
    from ..bundle.integrity import leftover_runs, verify_bundle

    problems = verify_bundle(args.bundle, progress=True)
    for problem in problems:
        print(f"  {problem}")
    for path in leftover_runs(args.bundle):
        print(f"  note: {path} was left by an interrupted svdtrt run; the next command that changes the bundle "
              "removes it")
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in '{args.bundle}'")
        return 1
    print(f"bundle '{args.bundle}' verified: every file matches its manifest")
    return 0


def _print_timings(timings: dict) -> None:
    rows = [("VAE encode", "vae_encode"), ("CLIP", "clip"), ("UNet x steps", "unet"),
            ("  per step", "unet_per_step"), ("VAE decode", "vae_decode"), ("total", "total")]
    for label, key in rows:
        if key in timings:
            print(f"  {label:14s} {timings[key]:8.3f} s")


def _cmd_run(args) -> int:
    import json
    from dataclasses import asdict

    from ..bundle.store import Bundle
    from ..media.images import load_image
    from ..media.video import check_clip_path, check_frames_path, save_frames, write_clip
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
    choice = BACKEND.parse(args)
    settings = SAMPLING.parse(args, bundle, WORK.parse(args))
    SAMPLING.before_sampling(bundle, settings, [(choice.backend, choice.precision, choice.device)])
    # Reserved before the model, the backend and sampling: an unwritable or taken path fails now,
    # not after minutes of work.
    with _reserved(args.force, args.out, args.save_frames, args.timings) as (clip_out, frames_out, timings_out):
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
          f"{len(clip.unet_calls)} UNet calls)")
    _print_random_weights(bundle)
    _print_timings(clip.timings)
    return 0


def _print_random_weights(bundle) -> None:
    """Say so when the bundle's model has seeded random weights: its clips are not videos of the photo."""
    note = bundle.manifest.source.random_weights_note()
    if note:
        print(f"note: {note}")


def _cmd_check(args) -> int:
    import json

    from ..bundle.store import Bundle
    from ..check.compare import check_bundle
    from ..media.images import load_image, sample_image
    from ..models.loading import load_model, reference_model
    from ..precisions import precision as lookup_precision

    with _reserved(args.force, args.report) as (report_out,):  # before minutes of work
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
            report_out.write(lambda part: part.write_text(json.dumps(report, indent=2) + "\n"))
            report_out.publish()
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
    if "vs_fp32_graphs" in report["end_to_end"]:
        e = report["end_to_end"]["vs_fp32_graphs"]
        print(f"  clip vs fp32 graphs: PSNR min {e['min_psnr_db']:.1f} dB, mean {e['mean_psnr_db']:.1f} dB; "
              f"SSIM min {e['min_ssim']:.6f}")
    print("PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"]))


def _cmd_calibrate(args) -> int:
    from ..bundle.store import Bundle
    from ..calibration.capture import calibrate_bundle, calibration_images
    from ..models.loading import load_model
    from ..runtime.limits import MAX_STEPS, SEED_RANGE

    Bundle.open(args.bundle)
    if not 1 <= args.steps <= MAX_STEPS:
        raise InputError(f"--steps must be at least 1 and at most {MAX_STEPS}, got {args.steps}")
    if not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1]:  # image i uses seed + i, checked by the pipeline
        raise InputError(f"--seed must be from 0 to 2**64 - 1 (what torch.Generator takes), got {args.seed}")
    images = calibration_images(args.images, args.count)
    model = load_model(args.model) if args.model else None
    entry = calibrate_bundle(args.bundle, images, args.name, args.steps, args.seed, args.force, model=model)
    print(f"calibration set '{args.name}' written to {args.bundle / entry.directory} "
          f"in {entry.seconds:.1f} s ({len(images)} images, {args.steps} steps; "
          f"held out: {entry.images[-1].name})")
    for name, c in entry.components.items():
        print(f"  {name:12s} {len(c.calibration):4d} calibration + {len(c.held_out):3d} held-out samples")
    return 0


def _cmd_quantize(args) -> int:
    from ..bundle.store import Bundle
    from ..calibration.quantize import quantize_bundle
    from ..calibration.recipe import DEFAULT_EXCLUDE
    from ..models.loading import load_model

    Bundle.open(args.bundle)
    exclude = DEFAULT_EXCLUDE if args.exclude is None else [p for p in args.exclude if p]
    model = load_model(args.model) if args.model else None
    entries = quantize_bundle(args.bundle, args.precision, args.calibration, exclude, args.force, model=model,
                              quantize_bias=args.quantize_bias)
    print(f"{args.precision} graphs written to {args.bundle} (calibration set '{args.calibration}')")
    for name, e in entries.items():
        q = e.quantization
        ops = ", ".join(f"{n} {k}" for k, n in q.qdq["quantized_ops"].items())
        acc = q.held_out_accuracy
        print(f"  {name:12s} quantized in {e.seconds:6.1f} s: {ops} quantized, "
              f"{len(q.excluded_nodes)} kept fp32, zero points all 0")
        for out, m in acc.outputs.items():
            extra = f"  PSNR {m['psnr_db']:.1f} dB" if "psnr_db" in m else ""
            print(f"    {out:12s} vs fp32 PyTorch on {acc.samples} held-out samples: cosine {m['cosine']:.6f}  "
                  f"max abs {m['max_abs_error']:.3g}  mean abs {m['mean_abs_error']:.3g}{extra}  "
                  f"[{acc.measured_by}]")
    return 0


def _cmd_demo(args) -> int:
    from ..bundle.store import Bundle
    from .demo import run_demo

    report = run_demo(args.out, args.force)
    _print_report(report)
    print(f"demo written to {args.out}/ in {report['demo_seconds']:.1f} s: clip.mp4 (the ONNX Runtime clip), "
          "side_by_side.png (input, ONNX Runtime and diffusers frames, their difference), report.json, bundle/")
    _print_random_weights(Bundle.open(args.out / "bundle"))
    return 0 if report["passed"] else 1


def _cmd_build(args) -> int:
    from ..build.plan import plan_build
    from ..bundle.store import Bundle

    bundle = Bundle.open(args.bundle)
    plan = plan_build(bundle, args.precision, args.profile, *BUILD_SHAPES.parse(args),
                      args.components, args.workspace, args.timing_cache)
    if not args.dry_run:
        from ..environment import require_tensorrt

        require_tensorrt("svdtrt build")  # before announcing a build this machine cannot do
    print(f"{'plan' if args.dry_run else 'building'}: {plan['precision']} engines, {plan['profile']} profile, "
          f"strongly typed, workspace {_gib(plan['flags']['workspace_bytes'])}")
    for name, item in plan["components"].items():
        print(f"  {name:14s} {item['graph']} -> {item['engine']}")
        for tensor, p in item["profile"].items():
            print(f"    {tensor:22s} min {p['min']}  opt {p['opt']}  max {p['max']}")
    if args.dry_run:
        return 0
    from ..build.builder import build_engines

    for name, r in build_engines(bundle.path, plan, force=args.force).items():
        what = "reused (current)" if r["reused"] else f"built in {r['seconds']:.1f} s"
        print(f"  {name:14s} {r['bytes'] / 2**20:9.1f} MiB  {what}")
    return 0


def _gib(n) -> str:
    return "TensorRT's default" if n is None else f"{n / 2**30:g} GiB"


def _cmd_doctor(args) -> int:
    from ..environment import INSTALL_HINT
    from .doctor import diagnose, format_report

    report = diagnose()
    print("\n".join(format_report(report)))
    if report["backends"]["tensorrt"] != "ready":
        print(f"to get TensorRT and Polygraphy: {INSTALL_HINT}")
    return 0


def _cmd_bench(args) -> int:
    import shlex

    import torch

    from ..benchmark import BACKENDS, PRECISIONS, markdown, parse_names, run_benchmark, write_results
    from ..bundle.store import Bundle
    from ..media.images import load_image, sample_image
    from ..models.loading import load_model, reference_model

    backends = parse_names(args.backends, BACKENDS, "backend")
    precisions = parse_names(args.precisions, PRECISIONS, "precision")
    if os.path.lexists(args.out) and not args.force:  # before minutes of measuring
        raise InputError(f"'{args.out}' already exists; choose another path or pass --force to replace it")
    bundle = Bundle.open(args.bundle)
    image = load_image(args.image) if args.image else sample_image()
    settings, *work = [SAMPLING.parse(args, bundle, v) for v in WORK_LISTS.parse(args)]  # the base first: full compute
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # one row at a time: the largest row must fit
    rows = [(b, p, device) for b in backends or BACKENDS for p in precisions or bundle.precisions()]
    SAMPLING.before_sampling(bundle, settings, rows, reference=True)
    model = reference_model(bundle, load_model(args.model) if args.model else None)
    results = run_benchmark(bundle, image, settings, model, backends, precisions, args.warmup, args.repeat,
                            device, args.threads, command=shlex.join(["svdtrt", *args.argv]), progress=True,
                            work=work)
    write_results(results, args.out, args.force)
    print(markdown(results), end="")
    print(f"results written to {args.out}/ in {results['seconds']:.1f} s")
    return 0


def _cmd_serve(args) -> int:
    from ..bundle.store import Bundle

    if args.max_queued < 0 or not args.request_timeout > 0:
        raise InputError("--max-queued must be 0 or more and --request-timeout more than 0")
    bundle = Bundle.open(args.bundle)
    worker = REPLICAS.parse(args, bundle, BACKEND.parse(args))
    from ..serving.app import ServeOptions, serve_forever

    serve_forever(ServeOptions(worker, replicas=args.replicas, max_queued=args.max_queued), args.host, args.port,
                  args.request_timeout)
    return 0


def _cmd_batch(args) -> int:
    from ..bundle.store import Bundle
    from ..serving.batch import JOURNAL, BatchJob, list_images, output_names

    bundle = Bundle.open(args.bundle)
    choice = BACKEND.parse(args)
    settings = SAMPLING.parse(args, bundle, WORK.parse(args))
    SAMPLING.before_sampling(bundle, settings, [(choice.backend, choice.precision, choice.device)])
    images = list_images(args.images)
    output_names(images, args.format)  # before Ray starts
    worker = WORKERS.parse(args, bundle, choice)
    from ..serving.batch import run_batch

    summary = run_batch(BatchJob(worker, images, args.out, settings, args.workers, args.format))
    print(f"{len(summary.made)} clip(s) made, {len(summary.skipped)} already in {args.out}, "
          f"{len(summary.failed)} failed, in {summary.seconds:.1f} s; records in {args.out / JOURNAL}")
    if summary.failed:
        print(f"failed: {', '.join(summary.failed)}; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"export": _cmd_export, "run": _cmd_run, "check": _cmd_check, "demo": _cmd_demo,
            "convert": _cmd_convert, "calibrate": _cmd_calibrate, "quantize": _cmd_quantize, "build": _cmd_build,
            "verify": _cmd_verify, "doctor": _cmd_doctor, "bench": _cmd_bench, "serve": _cmd_serve,
            "batch": _cmd_batch}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 1 (a failed check or verify), 2 (bad input, one
    line on stderr) or 130 (Ctrl-C, at any point: parsing, a command's lazy imports, its work)."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # argparse exits on --help and on bad arguments; return its code instead
            return e.code
        args.argv = sys.argv[1:] if argv is None else list(argv)  # recorded by bench
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        _quiet_libraries(args.verbose)
        # Each command imports its modules lazily, inside this try: a Ctrl-C during an import
        # is handled as any other. -v's log lines go through tqdm, so they do not tear a bar.
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[logging.getLogger()]) if args.verbose else contextlib.nullcontext():
            return COMMANDS[args.command](args)
    except SvdtrtError as e:
        print(f"svdtrt: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] != "onnxruntime":
            raise
        from ..environment import ORT_HINT

        print(f"svdtrt: error: ONNX Runtime is not installed; {ORT_HINT}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("svdtrt: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


def _quiet_libraries(verbose: bool) -> None:
    """Silence the libraries' advisory warnings (e.g. transformers' torchvision notice) unless -v,
    through the variables they read when first imported (so no command imports them for this)."""
    if verbose:
        return
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


if __name__ == "__main__":
    sys.exit(main())
