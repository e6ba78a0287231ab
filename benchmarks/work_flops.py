"""UNet FLOPs per clip for work-reduction settings, counted on meta tensors (no sampling, no
weights): PyTorch's FLOP counter over the exported modules built from a preset's released UNet
config (svdtrt.models.flops), with the loop's own call schedule (svdtrt.runtime.pipeline.planned_unet_calls).

    python benchmarks/work_flops.py --preset svd-xt --frames 25 --height 576 --width 1024 --steps 25

Prints a Markdown table: settings, UNet calls, TFLOP per clip, and the saving over full compute.
"""

from __future__ import annotations

import argparse

from svdtrt.models.flops import clip_unet_flops, unet_call_flops
from svdtrt.models.presets import PRESETS
from svdtrt.runtime.pipeline import SamplingSettings, planned_unet_calls
from svdtrt.specs import ModelDims

SETTINGS = [(1, None), (2, None), (3, None), (1, 12), (3, 12), (5, 12), (4, 8), (5, 6), (5, 4)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="svd-xt")
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--height", type=int, default=576)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cache-depth", type=int, default=1)
    p.add_argument("--cache-layer", type=int, default=0)
    args = p.parse_args()
    cfg = PRESETS[args.preset]
    dims = ModelDims.from_configs(cfg["unet"], cfg["vae"], cfg["image_encoder"], args.cache_depth, args.cache_layer)
    shape = (args.frames, args.height, args.width)
    full = unet_call_flops(cfg["unet"], dims, "unet", 2, *shape)
    shallow = unet_call_flops(cfg["unet"], dims, "unet_shallow", 2, *shape)
    print(f"{args.preset} UNet, {args.frames} frames at {args.width}x{args.height}, {args.steps} steps, "
          f"cache depth {args.cache_depth}, layer {args.cache_layer}: {full / 1e12:.4g} TFLOP per batch-2 call, shallow UNet "
          f"{shallow / 1e12:.4g} TFLOP ({100 * shallow / full:.1f} %)\n")
    print("| cache interval | guidance steps | UNet calls (full / shallow, batch 2 / 1) | UNet TFLOP per clip | x fewer |")
    print("|---|---|---|---|---|")
    base = None
    for interval, guidance in SETTINGS:
        s = SamplingSettings(*shape, steps=args.steps, cache_interval=interval, guidance_steps=guidance)
        calls = planned_unet_calls(s)
        work = clip_unet_flops(cfg["unet"], dims, calls, *shape)
        base = base or work["unet_flops"]
        kinds = ", ".join(f"{k} x{v['calls']}" for k, v in work["graphs"].items())
        print(f"| {interval} | {'all' if guidance is None else guidance} | {kinds} | "
              f"{work['unet_flops'] / 1e12:.4g} | {base / work['unet_flops']:.2f} |")


if __name__ == "__main__":
    main()
