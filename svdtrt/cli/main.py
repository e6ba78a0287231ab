"""The ``svdtrt`` command line.

Every :class:`SvdtrtError` becomes one line on stderr and exit code 2; a missed accuracy
threshold in ``check`` is exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path

from .. import __version__
from ..errors import InputError, SvdtrtError
from ..precisions import NAMES as PRECISIONS
from ..precisions import made_by
from ..runtime.backends import BACKENDS
from ..specs import DEFAULT_OPSET

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


def _finite_float(text: str) -> float:
    """A float option: a finite number (``nan``, ``inf`` are refused; ranges are checked by
    :meth:`svdtrt.runtime.pipeline.SamplingSettings.check`)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def _component_list(text: str) -> list[str]:
    from ..specs import COMPONENTS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown component(s) '{','.join(unknown) or text}': choose from "
                                         f"{', '.join(COMPONENTS)}")
    return names


def _sampling_options(p: argparse.ArgumentParser, work_lists: bool = False) -> None:
    from ..runtime.limits import FPS_RANGE, MAX_STEPS, MOTION_BUCKET_RANGE

    g = p.add_argument_group("sampling (defaults: the bundle's shape and diffusers' pipeline defaults)")
    g.add_argument("--seed", type=int, default=0, help="seed of the CPU torch.Generator, 0 to 2**64-1 (default 0)")
    g.add_argument("--steps", type=int, help=f"denoising steps, 1 to {MAX_STEPS} (default: the scheduler's, "
                                             "25 for euler)")
    g.add_argument("--frames", type=int, help="frames of the clip (default and range: the bundle's)")
    g.add_argument("--height", type=int, help="clip height in pixels (default and range: the bundle's)")
    g.add_argument("--width", type=int, help="clip width in pixels (default and range: the bundle's)")
    g.add_argument("--allow-outside-range", action="store_true",
                   help="run a --frames/--height/--width outside the bundle's exported range (ONNX Runtime "
                        "may take it; TensorRT engines built for the bundle's profiles refuse it)")
    g.add_argument("--fps", type=int, default=7, help="frames per second (conditioning and mp4), "
                                                      f"{FPS_RANGE[0]} to {FPS_RANGE[1]} (default 7)")
    g.add_argument("--motion-bucket-id", type=int, default=127,
                   help=f"motion conditioning, {MOTION_BUCKET_RANGE[0]} to {MOTION_BUCKET_RANGE[1]} (default 127)")
    g.add_argument("--noise-aug-strength", type=_finite_float, default=0.02,
                   help="conditioning noise, >= 0 (default 0.02)")
    g.add_argument("--min-guidance-scale", type=_finite_float, default=1.0,
                   help="guidance at the first frame, >= 0 (default 1)")
    g.add_argument("--max-guidance-scale", type=_finite_float, default=3.0,
                   help="guidance at the last frame, >= 0; <= 1 turns guidance off (default 3)")
    g.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call (default: all)")
    _work_options(p, lists=work_lists)


def _work_options(p: argparse.ArgumentParser, lists: bool = False) -> None:
    """Fewer and cheaper UNet calls (``bench`` takes comma-separated lists of each)."""
    from ..runtime.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

    g = p.add_argument_group("work reduction" + (" (comma-separated lists: one row per combination)" if lists
                                                  else ""))
    choices = ", ".join(f"{n} ({c.summary}, {c.default_steps} steps)" for n, c in SCHEDULERS.items())
    g.add_argument("--scheduler", default=DEFAULT_SCHEDULER, choices=None if lists else tuple(SCHEDULERS),
                   help=f"diffusers scheduler: {choices} (default {DEFAULT_SCHEDULER})")
    g.add_argument("--cache-interval", default="1" if lists else 1, type=str if lists else int,
                   help="block caching: the full UNet every N-th step, the shallow UNet between (default 1: "
                        "no caching)")
    g.add_argument("--guidance-steps", default=None, type=str if lists else int,
                   help="classifier-free guidance on the first K steps only, batch-1 UNet calls after "
                        "(default: every step" + ("; 'all' in a list" if lists else "") + ")")


def _backend_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS,
                   help="what runs the components (default onnxruntime, on CPU; onnxruntime-cuda and "
                        "onnxruntime-trt need onnxruntime-gpu; tensorrt runs engines from 'svdtrt build')")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="graph or engine precision to run (default fp32)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="tensorrt: replay a static-profile UNet engine from a CUDA graph")
    p.add_argument("--one-engine-at-a-time", action="store_true",
                   help="tensorrt: keep only the engine in use loaded (Jetson's unified memory)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="torch: where the PyTorch modules run (default cpu)")
    p.add_argument("--model", help="source model for the torch backend and the reference "
                                   "(default: the one recorded in the bundle's manifest)")


def _ray_options(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("Ray (an embedded local Ray unless --address)")
    g.add_argument(f"--{what}", type=int, default=1,
                   help=f"{what}, each with one warm backend: one GPU each for a GPU backend (default 1)")
    g.add_argument(f"--cpus-per-{what[:-1]}", type=float, dest="cpus",
                   help="CPUs each asks Ray for, and its ONNX Runtime / PyTorch threads "
                        "(default: the cluster's CPUs shared evenly; 1 next to a GPU)")
    g.add_argument("--address", help="join this Ray cluster (auto, HOST:PORT of 'ray start --head', "
                                     "ray://HOST:10001) instead of starting a local Ray")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="svdtrt", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"svdtrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("export", help="export a model's four components to a bundle of ONNX graphs")
    p.add_argument("model", metavar="MODEL",
                   help="diffusers SVD directory, hub id, or preset (tiny, small, mid, svd, svd-xt)")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    p.add_argument("--frames", type=_size_range, help="frames: N or MIN:OPT:MAX (default: the model's)")
    p.add_argument("--height", type=_size_range, help="height in pixels: N or MIN:OPT:MAX")
    p.add_argument("--width", type=_size_range, help="width in pixels: N or MIN:OPT:MAX")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--variant", help="weights variant of a directory or hub model, e.g. fp16")
    p.add_argument("--random-weights", action="store_true",
                   help="seeded random weights (what every preset has; refused for a real model)")
    p.add_argument("--precision", default="fp32", choices=made_by("export") + made_by("convert"),
                   help="fp16 also writes fp16 graphs converted from the fp32 ones, as 'svdtrt convert' "
                        "does (default fp32)")
    p.add_argument("--components", type=_component_list,
                   help="comma-separated subset, e.g. unet,vae_decoder; added to an existing bundle at --out")
    p.add_argument("--cache-depth", type=int,
                   help="block caching: the deep feature enters the D-th up block from the last (default 1: "
                        "the last; deeper caches less and saves less; adding --components keeps the bundle's)")
    p.add_argument("--cache-layer", type=int,
                   help="block caching: the deep feature enters layer J of that up block (default 0: its input; "
                        "a later layer caches more of it and saves more, as DeepCache's finer skip branches)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")

    p = sub.add_parser("run", help="make a clip from an image with a bundle")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--image", required=True, type=Path, help="conditioning image (PNG, JPEG, ...)")
    p.add_argument("--out", required=True, type=Path, help="clip to write: .mp4 (H.264), .webm (VP9) or .gif, "
                                                         "by its extension")
    p.add_argument("--save-frames", type=Path, help="also save float32 [F, H, W, 3] frames in [0, 1] to this .npy file")
    p.add_argument("--timings", type=Path, metavar="FILE.json",
                   help="write per-stage seconds as JSON; on a GPU this synchronises the device around each "
                        "stage, which the default run does not")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    _backend_options(p)
    _sampling_options(p)

    p = sub.add_parser("check", help="measure a bundle's accuracy against PyTorch and diffusers")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--image", type=Path, help="conditioning image (default: scikit-image's astronaut photo)")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    _backend_options(p)
    _sampling_options(p)

    p = sub.add_parser("calibrate", help="record a calibration set from real sampling runs into a bundle")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--images", type=Path, help="folder of calibration photographs "
                                               "(default: scikit-image's sample photographs)")
    p.add_argument("--count", type=int, help="use the first N images (at least 2; the last is held out)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps per clip (default 25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--name", default="default", help="calibration set name (default 'default')")
    p.add_argument("--model", help="source model (default: the one recorded in the bundle's manifest)")
    p.add_argument("--force", action="store_true", help="replace an existing set of that name")

    p = sub.add_parser("convert", help="add fp16 graphs converted from a bundle's fp32 graphs")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--precision", default="fp16", choices=made_by("convert"), help="the precision to add (default fp16)")
    p.add_argument("--force", action="store_true", help="replace existing graphs of this precision")

    p = sub.add_parser("quantize", help="write int8 / fp8 Q/DQ graphs from a calibration set")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--precision", required=True, choices=made_by("quantize"), help="int8, or fp8 (E4M3)")
    p.add_argument("--calibration", default="default", help="calibration set name (default 'default')")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN",
                   help="node-name regular expressions kept in fp32, replacing the default recipe "
                        "(time/added-time embeddings, conv_in, conv_out, conv_shortcut); '--exclude' "
                        "followed by '' keeps nothing out")
    p.add_argument("--quantize-bias", action="store_true",
                   help="also quantize biases to int32: faster on ONNX Runtime's CPU provider, but "
                        "TensorRT cannot load such graphs")
    p.add_argument("--model", help="source model for the held-out comparison (default: the bundle's)")
    p.add_argument("--force", action="store_true", help="replace existing graphs of this precision")

    p = sub.add_parser("build", help="build TensorRT engines from a bundle's graphs of one precision")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--precision", required=True, choices=PRECISIONS,
                   help="which graphs to build from (engines are strongly typed: precision comes from the graph)")
    p.add_argument("--profile", default="dynamic", choices=("static", "dynamic"),
                   help="optimization profile: the manifest's min/opt/max (dynamic, default) or the optimal "
                        "shape only (static, fastest)")
    p.add_argument("--frames", type=_size_range, help="frames: N or MIN:OPT:MAX (default: the bundle's)")
    p.add_argument("--height", type=_size_range, help="height in pixels: N or MIN:OPT:MAX")
    p.add_argument("--width", type=_size_range, help="width in pixels: N or MIN:OPT:MAX")
    p.add_argument("--workspace", type=float, metavar="GB", help="TensorRT workspace limit in GiB (default: TensorRT's)")
    p.add_argument("--timing-cache", type=Path, metavar="FILE", help="tactic timing cache to read and update")
    p.add_argument("--components", nargs="+", metavar="NAME",
                   help="components to build (default all: image_encoder vae_encoder unet vae_decoder)")
    p.add_argument("--dry-run", action="store_true", help="print the build plan; build and write nothing")
    p.add_argument("--force", action="store_true", help="rebuild engines even when the cached ones are current")

    p = sub.add_parser("verify", help="check every file of a bundle against its manifest's sha256 and sizes")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)

    sub.add_parser("doctor", help="show what this machine offers: Python, torch, CUDA, GPU, TensorRT, ONNX Runtime")

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
                   help="directory to create: results.json, results.md, stages.png, tradeoff.png, work.png "
                        "(default svdtrt-bench)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    _sampling_options(p, work_lists=True)

    p = sub.add_parser("serve", help="serve clips over HTTP on Ray Serve (POST /v1/clips, GET /healthz)")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    _backend_options(p)
    _ray_options(p, "replicas")
    p.add_argument("--max-queued", type=int, default=8,
                   help="requests that may wait for a replica; more answer 503 with Retry-After (default 8)")
    p.add_argument("--request-timeout", type=float, default=600, metavar="SECONDS",
                   help="a request still unanswered after this answers 408 (default 600)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")

    p = sub.add_parser("batch", help="make clips for a folder or list of images on Ray workers")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--images", required=True, type=Path,
                   help="folder of images, or a text file with one image path per line")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for the clips (<image stem>.mp4) and clips.jsonl; a re-run skips published clips")
    p.add_argument("--format", default="mp4", choices=("mp4", "npy"),
                   help="mp4, or npy: float32 [F, H, W, 3] in [0, 1] as --save-frames writes (default mp4)")
    _backend_options(p)
    _ray_options(p, "workers")
    _sampling_options(p)

    p = sub.add_parser("demo", help="export the tiny preset, run it on a real photo and check it")
    p.add_argument("--out", type=Path, default=Path("svdtrt-demo"), help="directory to create (default svdtrt-demo)")
    p.add_argument("--force", action="store_true", help="replace an existing directory")
    _verbose_everywhere(sub)
    return parser


#: What ``svdtrt --help`` says svdtrt is (plain text: argparse prints it as it is).
DESCRIPTION = ("Stable Video Diffusion exported to ONNX and TensorRT, run and checked against diffusers. "
               "Start with 'svdtrt demo'.")
EPILOG = "Each command's options: svdtrt COMMAND --help. Bad input ends with one line and exit code 2."
VERBOSE_HELP = "also log each stage's details and timings (model loads, sessions, files written)"


def _verbose_everywhere(sub) -> None:
    """Accept ``-v`` after the command too (``svdtrt check B -v``). SUPPRESS as the default keeps
    a subcommand from resetting a ``-v`` given before it."""
    for p in sub.choices.values():
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def _given(value, default):
    return default if value is None else value


def _settings(args, bundle, **work):
    """The sampling settings of ``run``, ``check`` and ``bench``, checked: their limits
    (:meth:`SamplingSettings.check`) and the bundle's exported size range, unless
    ``--allow-outside-range`` (whose warning :func:`_warn_outside_range` prints once every other
    check has passed). ``work``: ``scheduler``, ``cache_interval``, ``guidance_steps`` in place of
    the arguments' (``bench`` passes each of its combinations). ``--steps`` defaults to the
    scheduler's."""
    from ..runtime.pipeline import SamplingSettings
    from ..runtime.schedulers import scheduler_choice

    work = {"scheduler": args.scheduler, "cache_interval": args.cache_interval,
            "guidance_steps": args.guidance_steps, **work}
    frames, height, width = bundle.default_shape
    settings = SamplingSettings(
        frames=_given(args.frames, frames), height=_given(args.height, height), width=_given(args.width, width),
        steps=_given(args.steps, scheduler_choice(work["scheduler"]).default_steps), fps=args.fps,
        motion_bucket_id=args.motion_bucket_id,
        noise_aug_strength=args.noise_aug_strength, min_guidance_scale=args.min_guidance_scale,
        max_guidance_scale=args.max_guidance_scale, decode_chunk_size=args.decode_chunk_size, seed=args.seed,
        **work,
    )
    settings.check(bundle.dims)
    outside = bundle.outside_range(settings.frames, settings.height, settings.width)
    if outside and not args.allow_outside_range:
        raise InputError(f"{outside}; pass --allow-outside-range to run it anyway (TensorRT engines built "
                         "for the bundle's profiles will refuse it), or export a bundle for this size")
    return settings


def _warn_outside_range(bundle, settings) -> None:
    outside = bundle.outside_range(settings.frames, settings.height, settings.width)
    if outside:
        print(f"svdtrt: warning: {outside}; running it as --allow-outside-range asks: ONNX Runtime may take it, "
              "TensorRT engines built for the bundle's profiles will refuse it", file=sys.stderr)


def _check_memory(bundle, settings, backend: str, precision: str, device: str = "cpu", reference: bool = False,
                  clips: int = 1) -> None:
    """Refuse, before any model load or sampling, a clip whose host memory estimate does not fit."""
    from ..runtime.memory import check_host_memory, estimate_host_memory

    check_host_memory(estimate_host_memory(bundle, settings, backend, precision, device, reference, clips),
                      f"a {settings.frames}-frame {settings.width}x{settings.height} clip on {backend} ({precision})")


@contextlib.contextmanager
def _discarded_on_error(*outputs):
    """Remove the reserved part files of ``outputs`` (OutputFile or None) when the block fails or
    is interrupted, so that nothing half-written is left."""
    try:
        yield
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
    bundle = export_bundle(model, args.out, args.frames, args.height, args.width, args.opset, args.force,
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


def _backend_kwargs(args) -> dict:
    """The backend-specific options of ``run`` and ``check``, as ``create_backend`` keywords."""
    return {"device": args.device, "cuda_graph": args.cuda_graph, "one_engine_at_a_time": args.one_engine_at_a_time}


def _cmd_run(args) -> int:
    import json
    from dataclasses import asdict

    from ..bundle.store import Bundle
    from ..media.images import load_image
    from ..media.video import check_clip_path, check_frames_path, save_frames, write_clip
    from ..models.loading import load_model, reference_model
    from ..publishing import OutputFile
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
    settings = _settings(args, bundle)
    _check_memory(bundle, settings, args.backend, args.precision, args.device)
    _warn_outside_range(bundle, settings)
    # Reserved before the model, the backend and sampling: an unwritable or taken path fails now,
    # not after minutes of work.
    clip_out = OutputFile(args.out, args.force)
    with _discarded_on_error(clip_out):
        frames_out = OutputFile(args.save_frames, args.force) if args.save_frames else None
    with _discarded_on_error(clip_out, frames_out):
        timings_out = OutputFile(args.timings, args.force) if args.timings else None
    with _discarded_on_error(clip_out, frames_out, timings_out):
        model = reference_model(bundle, load_model(args.model)) if args.model else None
        backend = create_backend(args.backend, bundle, args.precision, model=model, **_backend_kwargs(args))
        clip = SvdPipeline(backend, bundle)(image, settings, progress=True, timings=bool(args.timings))
        clip_out.write(lambda part: write_clip(clip.frames, part, fps=settings.fps, suffix=clip_format))
        if frames_out:
            frames_out.write(lambda part: save_frames(clip.frames, part))
            frames_out.publish()
        if timings_out:
            from ..models.flops import clip_unet_flops

            work = clip_unet_flops(bundle.manifest.configs["unet"], bundle.dims, clip.unet_calls, settings.frames,
                                   settings.height, settings.width)
            record = {"backend": args.backend, "precision": args.precision, "settings": asdict(settings),
                      "seconds": clip.timings, "unet_calls": work["unet_calls"], "unet_flops": work["unet_flops"],
                      "unet_graphs": work["graphs"]}
            timings_out.write(lambda part: part.write_text(json.dumps(record, indent=2) + "\n"))
            timings_out.publish()
        clip_out.publish()
    print(f"{settings.frames} frames of {settings.width}x{settings.height} written to {args.out} "
          f"({args.backend}, {args.precision}; {settings.scheduler}, {settings.steps} steps, "
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
    from ..publishing import OutputFile

    report_out = OutputFile(args.report, args.force) if args.report else None  # before minutes of work
    with _discarded_on_error(report_out):
        bundle = Bundle.open(args.bundle)
        image = load_image(args.image) if args.image else sample_image()
        settings = _settings(args, bundle)
        # the tested, the PyTorch and diffusers' clips, and the fp32 graphs' for a quantized precision
        clips = 4 if lookup_precision(args.precision).quantized and args.backend == "onnxruntime" else 3
        _check_memory(bundle, settings, args.backend, args.precision, args.device, reference=True, clips=clips)
        _warn_outside_range(bundle, settings)
        model = reference_model(bundle, load_model(args.model)) if args.model else None
        report = check_bundle(bundle, image, settings, args.backend, args.precision, model=model, progress=True,
                              backend_options=_backend_kwargs(args))
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
    from ..graphs.qdq import DEFAULT_EXCLUDE
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
    plan = plan_build(bundle, args.precision, args.profile, args.frames, args.height, args.width,
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


def _work_variants(args) -> list[dict]:
    """``bench``'s ``--scheduler``, ``--cache-interval`` and ``--guidance-steps`` lists as one
    settings dict per combination, the full-compute base first (the first scheduler, no caching,
    guidance on every step), each combination once."""
    import itertools

    from ..benchmark import parse_names
    from ..runtime.schedulers import SCHEDULERS

    def integers(text, what, words=()):
        values = []
        for item in (t.strip() for t in text.split(",") if t.strip()):
            if item in words:
                values.append(None)
                continue
            try:
                values.append(int(item))
            except ValueError:
                raise InputError(f"--{what} takes comma-separated integers{' or ' + '/'.join(words) if words else ''}, "
                                 f"got '{item}'") from None
        if not values:
            raise InputError(f"--{what} is empty")
        return values

    schedulers = parse_names(args.scheduler, tuple(SCHEDULERS), "scheduler")
    intervals = integers(args.cache_interval, "cache-interval")
    guidance = integers(args.guidance_steps or "all", "guidance-steps", ("all",))
    base = {"scheduler": schedulers[0], "cache_interval": 1, "guidance_steps": None}
    variants = [base] + [{"scheduler": a, "cache_interval": b, "guidance_steps": c}
                         for a, b, c in itertools.product(schedulers, intervals, guidance)]
    return [dict(v) for v in dict.fromkeys(tuple(v.items()) for v in variants)]


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
    variants = _work_variants(args)
    settings = _settings(args, bundle, **variants[0])  # the base: full compute
    work = [_settings(args, bundle, **v) for v in variants[1:]]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for backend in backends or BACKENDS:  # one row at a time: the largest row must fit
        for precision in precisions or bundle.precisions():
            _check_memory(bundle, settings, backend, precision, device, reference=True)
    _warn_outside_range(bundle, settings)
    model = reference_model(bundle, load_model(args.model) if args.model else None)
    results = run_benchmark(bundle, image, settings, model, backends, precisions, args.warmup, args.repeat,
                            device, args.threads, command=shlex.join(["svdtrt", *args.argv]), progress=True,
                            work=work)
    write_results(results, args.out, args.force)
    print(markdown(results), end="")
    print(f"results written to {args.out}/ in {results['seconds']:.1f} s")
    return 0


def _worker_options(args, bundle, count: int):
    """The serving layer's WorkerOptions from ``serve``'s or ``batch``'s options, checked here
    first (backend, precision, count) so that a mistake is one line, not a replica's traceback;
    then joins Ray (:func:`svdtrt.serving.cluster.connect`) to share out its CPUs."""
    from ..runtime.backends import create_backend
    from ..serving.cluster import connect, cpus_each
    from ..serving.worker import WorkerOptions
    from ..specs import COMPONENTS

    if args.backend.startswith("onnxruntime"):  # cheap: checks the precision and the providers, loads nothing
        create_backend(args.backend, bundle, args.precision)
        for name, spec in COMPONENTS.items():
            if not spec.shares_weights_with:  # the block-caching graphs are optional
                bundle.graph(name, args.precision)
    options = WorkerOptions(bundle=str(args.bundle.resolve()), backend=args.backend, precision=args.precision,
                            device=args.device, model=args.model, cuda_graph=args.cuda_graph,
                            one_engine_at_a_time=args.one_engine_at_a_time)
    what = "replicas" if args.command == "serve" else "workers"
    if count < 1:  # before Ray starts
        raise InputError(f"--{what} must be at least 1, got {count}")
    connect(args.address)
    return dataclasses.replace(options, cpus=cpus_each(count, args.cpus, options.needs_gpu, what))


def _cmd_serve(args) -> int:
    from ..bundle.store import Bundle

    if args.max_queued < 0 or not args.request_timeout > 0:
        raise InputError("--max-queued must be 0 or more and --request-timeout more than 0")
    worker = _worker_options(args, Bundle.open(args.bundle), args.replicas)
    from ..serving.app import ServeOptions, serve_forever

    serve_forever(ServeOptions(worker, replicas=args.replicas, max_queued=args.max_queued), args.host, args.port,
                  args.request_timeout)
    return 0


def _cmd_batch(args) -> int:
    from ..bundle.store import Bundle
    from ..serving.batch import JOURNAL, BatchJob, list_images, output_names

    bundle = Bundle.open(args.bundle)
    settings = _settings(args, bundle)
    _check_memory(bundle, settings, args.backend, args.precision, args.device)
    _warn_outside_range(bundle, settings)
    images = list_images(args.images)
    output_names(images, args.format)  # before Ray starts
    worker = _worker_options(args, bundle, args.workers)
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
