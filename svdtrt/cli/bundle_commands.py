"""The commands that make and change bundles: ``export``, ``convert``, ``calibrate``, ``quantize``,
``build``, and ``verify``, which checks one."""

from __future__ import annotations

import logging

from ..errors import InputError
from ..progress import loading
from .args import BUILD_SHAPES, EXPORT_SHAPES

#: Suffixes of files svdtrt writes or reads besides clips, frames and images (the media registries
#: name those): a bundle (a folder) named with one is refused, since it is surely a slip
#: (``export --out clip.mp4`` makes a folder no player opens).
OTHER_FILE_SUFFIXES = (".npz", ".json", ".onnx", ".engine", ".txt")

log = logging.getLogger(__name__)


def export(args) -> int:
    """``svdtrt export``: a model's components exported to a bundle of ONNX graphs (fp16 too with
    ``--precision fp16``); exit code 0. An ``--out`` svdtrt may not write (a file's name, something
    that is not a bundle, an existing bundle without ``--force`` or ``--components``) is refused
    before the model loads."""
    with loading("export", "PyTorch, diffusers and the ONNX exporter", log):
        from ..bundle.store import BUNDLE_FOLDER, is_bundle_folder
        from ..export.bundle_export import export_bundle
        from ..hints import fresh_path
        from ..media.images import IMAGE_SUFFIXES
        from ..media.video import CLIP_FORMATS, FRAMES_SUFFIX
        from ..models.loading import load_model

    file_suffixes = (*CLIP_FORMATS, FRAMES_SUFFIX, *IMAGE_SUFFIXES, *OTHER_FILE_SUFFIXES)

    adding = args.components and is_bundle_folder(args.out) and not args.force
    if not adding:  # all before the model load
        BUNDLE_FOLDER.check_target(args.out, args.force)
        if args.out.suffix.lower() in file_suffixes and not is_bundle_folder(args.out):
            raise InputError(f"--out '{args.out}' names a {args.out.suffix} file, but a bundle is a folder; give a "
                             f"folder name, e.g. '{fresh_path(args.out, BUNDLE_FOLDER.suffix)}'")
    model = load_model(args.model, variant=args.variant, random_weights=args.random_weights)
    precisions = ("fp32", "fp16") if args.precision == "fp16" else ("fp32",)
    bundle = export_bundle(model, args.out, *EXPORT_SHAPES.parse(args), args.opset, args.force,
                           components=args.components, precisions=precisions, release_weights=True,
                           cache_depth=args.cache_depth, cache_layer=args.cache_layer)
    print(f"bundle written to {bundle.path}")
    _print_graphs(bundle, args.components)
    return 0


def _print_graphs(bundle, components=None, precisions=None) -> None:
    from ..specs import COMPONENTS

    for name, entry in bundle.manifest.components.items():
        if components and name not in components:
            continue
        for precision, g in entry.graphs.items():
            if precisions and precision not in precisions:
                continue
            if g.kept_precision and precision == "fp16":  # diffusers' fp16 pipeline keeps it fp32 too
                flag = COMPONENTS[name].fp16_upcast
                print(f"  {name:14s} {precision}  runs its {g.kept_precision} graph, by design: the model's "
                      f"{flag[0] if flag else ''} config sets {flag[1] if flag else 'an upcast'}, as in diffusers' "
                      "fp16 pipeline")
            if g.validation is None:
                continue
            outputs = g.validation.outputs.values()
            print(f"  {name:14s} {precision}  {g.bytes / 2**20:9.1f} MiB  {g.seconds or 0.0:6.1f} s  "
                  f"vs {g.validation.reference}: cosine {min(m['cosine'] for m in outputs):.6f}, "
                  f"PSNR {min(m['psnr_db'] for m in outputs):.1f} dB")
        if entry.fixed_axes:
            print(f"  {name:14s} axes fixed in the graph: {', '.join(entry.fixed_axes)}")


def convert(args) -> int:
    """``svdtrt convert``: fp16 graphs added from the bundle's fp32 graphs; exit code 0."""
    with loading("convert", "PyTorch, ONNX and ONNX Runtime", log):
        from ..export.convert import convert_bundle
        from ..specs import with_caching_graphs

    bundle = convert_bundle(args.bundle, args.precision, args.force, components=args.components)
    print(f"{args.precision} graphs written to {bundle.path}")
    _print_graphs(bundle, args.components and with_caching_graphs(args.components), precisions=[args.precision])
    return 0


def calibrate(args) -> int:
    """``svdtrt calibrate``: a calibration set recorded from real sampling runs; exit code 0."""
    from ..runtime.limits import MAX_STEPS, SEED_RANGE

    with loading("calibrate", "PyTorch, diffusers and ONNX Runtime", log):
        from ..bundle.store import Bundle
        from ..calibration.capture import calibrate_bundle, calibration_images
        from ..models.loading import load_model

    Bundle.open(args.bundle, complete=False)  # a damaged bundle is recorded from what verifies (Bundle.check_file)
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


def quantize(args) -> int:
    """``svdtrt quantize``: int8 or fp8 Q/DQ graphs from a calibration set, with their held-out
    accuracy; exit code 0."""
    with loading("quantize", "PyTorch, diffusers and ONNX Runtime's quantizer", log):
        from ..bundle.store import Bundle
        from ..calibration.quantize import quantize_bundle
        from ..graphs.qdq import DEFAULT_EXCLUDE
        from ..models.loading import load_model

    Bundle.open(args.bundle, complete=False)  # quantize hashes what it reads (Bundle.check_file)
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


def build(args) -> int:
    """``svdtrt build``: the build plan printed, then (unless ``--dry-run``) the TensorRT engines
    built; exit code 0."""
    with loading("build", "ONNX and the bundle's manifest", log):
        from ..build.plan import plan_build
        from ..bundle.store import Bundle

    bundle = Bundle.open(args.bundle, complete=False)  # build hashes the graphs it reads (Bundle.check_file)
    plan = plan_build(bundle, args.precision, args.profile, *BUILD_SHAPES.parse(args),
                      args.components, args.workspace, args.timing_cache, args.block_caching)
    if not args.dry_run:
        from ..environment import require_tensorrt

        require_tensorrt("svdtrt build")  # before announcing a build this machine cannot do
    print(f"{'plan' if args.dry_run else 'building'}: {plan.precision} engines, {plan.profile} profile, "
          f"strongly typed, workspace {_gib(plan.flags.workspace_bytes)}, timing cache "
          f"{plan.flags.timing_cache or 'one per TensorRT and GPU in the user cache'}")
    for name, item in plan.components.items():
        print(f"  {name:14s} {item.graph} -> {item.engine}")
        for tensor, p in item.profile.items():
            print(f"    {tensor:22s} min {p['min']}  opt {p['opt']}  max {p['max']}")
    if args.dry_run:
        return 0
    from ..build.builder import build_engines

    for name, r in build_engines(bundle.path, plan, force=args.force).items():
        what = "reused (current)" if r.reused else f"built in {r.seconds:.1f} s"
        print(f"  {name:14s} {r.bytes / 2**20:9.1f} MiB  {what}")
    return 0


def _gib(n) -> str:
    return "TensorRT's default" if n is None else f"{n / 2**30:g} GiB"


def verify(args) -> int:
    """``svdtrt verify``: every file of the bundle against its manifest; exit code 0 when it
    verifies, 1 when it does not (whatever the cause: a missing file, a wrong size or content, a
    corrupt manifest), with the one command that repairs it; a path that is not a bundle at all is
    bad input (exit code 2, raised)."""
    with loading("verify", "ONNX and the bundle's manifest", log):
        from ..bundle import integrity

    result = integrity.verify(args.bundle, progress=True)
    for problem in result.problems:
        print(f"  {problem}")
    for path in integrity.leftover_runs(args.bundle):
        print(f"  note: {path} was left by an interrupted svdtrt run; the next command that changes the bundle "
              "removes it")
    if result.problems:
        if result.repair:
            print(f"  {result.repair.sentence()}")
        print(f"FAILED: {len(result.problems)} problem(s) in '{args.bundle}'")
        return 1
    print(f"bundle '{args.bundle}' verified: every file matches its manifest")
    return 0
