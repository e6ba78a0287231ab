"""The ``svdtrt`` command line's parser: each command's own options, composed with the argument
groups it shares (:mod:`svdtrt.cli.args`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..precisions import NAMES as PRECISIONS
from ..precisions import made_by
from ..runtime.schedulers import SCHEDULERS
from ..specs import DEFAULT_OPSET
from .args import (
    BACKEND,
    BENCH_PROFILE,
    BUILD_SHAPES,
    DEVICE_MEMORY,
    EXPORT_SHAPES,
    PROFILE,
    REPLICAS,
    SAMPLING,
    TUNE_BACKEND,
    WORK,
    WORK_LISTS,
    WORKERS,
)

#: What ``svdtrt --help`` says svdtrt is (plain text: argparse prints it as it is).
DESCRIPTION = ("Stable Video Diffusion exported to ONNX and TensorRT, run and checked against diffusers. "
               "Start with 'svdtrt demo'.")
EPILOG = "Each command's options: svdtrt COMMAND --help. Bad input ends with one line and exit code 2."
VERBOSE_HELP = "also log each stage's details and timings (model loads, sessions, files written)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        self.exit(2, f"svdtrt: error: {message} (see '{self.prog} --help')\n")


def _component_list(text: str) -> list[str]:
    from ..runtime.lists import items
    from ..specs import COMPONENTS

    names = items(text)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown component(s) '{','.join(unknown) or text}': choose from "
                                         f"{', '.join(COMPONENTS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="svdtrt", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"svdtrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("export", help="export a model's four components to a bundle of ONNX graphs")
    p.add_argument("model", metavar="MODEL",
                   help="diffusers SVD directory, hub id, or preset (tiny, small, mid, svd, svd-xt)")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    EXPORT_SHAPES.add_to_parser(p)
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
    _compose(p, PROFILE, BACKEND, DEVICE_MEMORY, SAMPLING, WORK)

    p = sub.add_parser("check", help="measure a bundle's accuracy against PyTorch and diffusers")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--image", type=Path, help="conditioning image (default: scikit-image's astronaut photo)")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--force", action="store_true", help="replace an existing report")
    _compose(p, BACKEND, SAMPLING, WORK)

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
    p.add_argument("--components", type=_component_list,
                   help="comma-separated subset to convert, e.g. unet,vae_decoder (default all; unet brings the "
                        "block-caching graphs, which read its weights)")
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
                   help="TensorRT optimization profile (not a tuned profile of 'svdtrt tune'): the manifest's "
                        "min/opt/max (dynamic, default) or the optimal shape only (static, fastest)")
    BUILD_SHAPES.add_to_parser(p)
    p.add_argument("--workspace", type=float, metavar="GB", help="TensorRT workspace limit in GiB (default: TensorRT's)")
    p.add_argument("--timing-cache", type=Path, metavar="FILE",
                   help="tactic timing cache to read and update, outside the bundle (default: one per TensorRT "
                        "version and GPU in ~/.cache/svdtrt/tensorrt-timing)")
    p.add_argument("--components", nargs="+", metavar="NAME",
                   help="components to build (default SVD's four: image_encoder vae_encoder unet vae_decoder)")
    p.add_argument("--block-caching", action="store_true",
                   help="also build unet_full and unet_shallow, which --cache-interval above 1 runs (two more "
                        "UNet-sized builds; see docs/tensorrt.md)")
    p.add_argument("--dry-run", action="store_true", help="print the build plan; build and write nothing")
    p.add_argument("--force", action="store_true", help="rebuild engines even when the cached ones are current")

    p = sub.add_parser("verify", help="check every file of a bundle against its manifest's sha256 and sizes",
                       epilog="Exit code 0: the bundle verifies. 1: it does not, whatever the cause (a missing, "
                              "resized or corrupted file, a file the manifest does not list, a corrupt manifest); "
                              "the output names each problem and the command that repairs it. 2: BUNDLE is not a "
                              "bundle (not found, a file, or a folder without manifest.json), or bad arguments.")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)

    p = sub.add_parser("doctor", help="show what this machine offers: Python, torch, CUDA, GPU, TensorRT, ONNX Runtime; "
                                      "with a bundle, the memory a clip needs")
    p.add_argument("bundle", metavar="BUNDLE", type=Path, nargs="?",
                   help="also estimate the memory of a clip of this bundle with the options below")
    _compose(p, BACKEND, DEVICE_MEMORY, SAMPLING, WORK)

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
    _compose(p, SAMPLING, WORK_LISTS, BENCH_PROFILE)

    p = sub.add_parser("serve", help="serve clips over HTTP on Ray Serve (POST /v1/clips, GET /healthz)")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    _compose(p, PROFILE, BACKEND, REPLICAS)
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
    _compose(p, PROFILE, BACKEND, WORKERS, SAMPLING, WORK)

    p = sub.add_parser("tune", help="find the fastest settings above a quality floor on your images; --apply stores "
                                    "them as the bundle's profiles")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)
    p.add_argument("--min-psnr", type=float, metavar="DB",
                   help="the floor: worst-frame PSNR over the tuning images against the full-compute fp32 clip "
                        "(e.g. 30); profile 'fast' keeps it, 'balanced' keeps it plus 10 dB")
    p.add_argument("--min-ssim", type=float, metavar="S",
                   help="the floor in worst-frame SSIM (e.g. 0.95), with or instead of --min-psnr; 'balanced' "
                        "keeps a tenth of its deficit")
    p.add_argument("--images", type=Path, help="folder of images, or a text file with one image path per line, "
                                               "to tune on (default: the sample photos astronaut, chelsea, coffee)")
    p.add_argument("--held-out", type=Path, help="images to check the answers on, not tuned on (default: the sample "
                                                 "photos rocket, camera without --images; none with it)")
    _compose(p, TUNE_BACKEND)
    p.add_argument("--precisions", help="comma-separated precisions to try (default: the bundle's that the "
                                        "backend runs)")
    searched = "; ".join(f"{n} {','.join(map(str, c.search_steps))}" for n, c in SCHEDULERS.items() if c.search_steps)
    p.add_argument("--schedulers", help=f"comma-separated NAME or NAME:STEPS (default: each scheduler's search "
                                        f"steps: {searched})")
    p.add_argument("--cache-interval", help="comma-separated cache intervals (default 1,2,3,4 where the bundle "
                                            "has the block-caching graphs)")
    p.add_argument("--guidance-steps", help="comma-separated guidance steps or 'all' (default: all, 3/4 and 1/2 "
                                            "of each candidate's steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image's clips; image i uses seed + i "
                                                       "(default 0)")
    p.add_argument("--threads", type=int, help="CPU threads of PyTorch and of each ONNX Runtime session "
                                               "(default: each library's own)")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="stop before a candidate that would overrun it, with the best answers so far")
    p.add_argument("--exhaustive", action="store_true",
                   help="measure every candidate on every image, pruning nothing (to check the search)")
    p.add_argument("--out", type=Path, default=Path("svdtrt-tune"),
                   help="folder for the journal, the reference clips and results.json, results.md, pareto.png; "
                        "a re-run continues it (default svdtrt-tune)")
    p.add_argument("--apply", action="store_true",
                   help="store the answers in the bundle as profiles exact, balanced and fast")
    p.add_argument("--force", action="store_true",
                   help="replace the bundle's profiles of those names, or an --out that is not this tune's")

    p = sub.add_parser("info", help="show what a bundle holds: its model, graphs, engines, calibration sets and "
                                    "tuned profiles")
    p.add_argument("bundle", metavar="BUNDLE", type=Path)

    p = sub.add_parser("demo", help="export the tiny preset, run it on a real photo and check it")
    p.add_argument("--out", type=Path, default=Path("svdtrt-demo"), help="directory to create (default svdtrt-demo)")
    p.add_argument("--force", action="store_true", help="replace an existing directory")
    _verbose_everywhere(sub)
    return parser


def _compose(parser: argparse.ArgumentParser, *groups) -> None:
    for group in groups:
        group.add_to_parser(parser)


def _verbose_everywhere(sub) -> None:
    """Accept ``-v`` after the command too (``svdtrt check B -v``). SUPPRESS as the default keeps
    a subcommand from resetting a ``-v`` given before it."""
    for p in sub.choices.values():
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
