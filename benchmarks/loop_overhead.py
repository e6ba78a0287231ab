"""The sampling loop's own cost at a preset's real shapes, without running any network.

Every component is replaced by one that returns zeros of its spec's output shape at once, so
what :class:`svdtrt.runtime.pipeline.StageTimer` reports as ``overhead_per_step`` is exactly
the loop's work outside the UNet call (scheduler, guidance, concatenation, copies). The
weights are never built: only the preset's configs are read. Compare the printed figure with
a measured UNet call on the target device (docs/benchmarks.md).

    python benchmarks/loop_overhead.py [--preset svd-xt] [--steps 25] [--device cpu|cuda]
"""

import argparse
import statistics

import torch

from svdtrt.media.images import sample_image
from svdtrt.models.presets import PRESETS, SVD_FEATURE_EXTRACTOR, SVD_SCHEDULER
from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline
from svdtrt.specs import COMPONENTS, ModelDims


class ZerosBackend:
    """Each component returns zeros of its output shape: the loop's cost alone is left to time."""

    name = "zeros"

    def __init__(self, dims: ModelDims, device: str):
        self.dims, self.device = dims, torch.device(device)

    def component(self, name):
        spec = COMPONENTS[name]

        def run(inputs):
            # read the sizes off the inputs, as a real graph would
            first = inputs[spec.inputs[0].name]
            batch = first.shape[0]
            if name == "unet":
                frames, h, w = first.shape[1], first.shape[3], first.shape[4]
            elif name == "vae_decoder":
                frames, h, w = batch, first.shape[2], first.shape[3]
            else:
                frames, h, w = 1, first.shape[-2] // self.dims.latent_scale, first.shape[-1] // self.dims.latent_scale
            sizes = self.dims.sizes(batch, frames, h * self.dims.latent_scale, w * self.dims.latent_scale)
            return {t.name: torch.zeros(t.shape(sizes), device=self.device) for t in spec.outputs}

        return run

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


class PresetInfo:
    """What SvdPipeline reads from a model, taken from a preset's configs (no weights)."""

    def __init__(self, name: str):
        p = PRESETS[name]
        image_encoder = {"projection_dim": p["image_encoder"]["projection_dim"]}
        self.dims = ModelDims.from_configs(p["unet"], p["vae"], image_encoder)
        self.scheduler_config, self.feature_extractor_config = SVD_SCHEDULER, SVD_FEATURE_EXTRACTOR
        self.default_shape = (p["frames"], p["height"], p["width"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="svd-xt", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    info = PresetInfo(args.preset)
    frames, height, width = info.default_shape
    pipe = SvdPipeline(ZerosBackend(info.dims, args.device), info)
    settings = SamplingSettings(frames=frames, height=height, width=width, steps=args.steps)
    image = sample_image()
    runs = [pipe(image, settings).timings["overhead_per_step"] for _ in range(args.repeat + 1)][1:]
    print(f"{args.preset}: {frames} frames at {height}x{width}, {args.steps} steps, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"loop overhead per step: median {statistics.median(runs) * 1e3:.2f} ms "
          f"(runs: {', '.join(f'{r * 1e3:.2f}' for r in runs)} ms)")


if __name__ == "__main__":
    main()
