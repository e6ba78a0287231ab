"""What one clip is made with: :class:`SamplingSettings`, the checks of their limits, and the
settings of a clip from a bundle and the values a caller gives (``svdtrt run``'s options, a
service's form fields, :meth:`SamplingSettings.for_bundle`), so that every caller fills in the
defaults and refuses bad values the same way.

Plain data, kept apart from the loop (:mod:`svdtrt.runtime.pipeline`) so that reading settings
imports no torch: only diffusers' generator needs it (:meth:`SamplingSettings.pipeline_kwargs`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from ..errors import InputError
from ..specs import ModelDims
from .limits import FPS_RANGE, MAX_STEPS, MOTION_BUCKET_RANGE, SEED_RANGE
from .schedulers import DEFAULT_SCHEDULER, scheduler_choice


def _finite(value) -> bool:
    """True for an int (any size) or a finite float; False for NaN and infinities."""
    return isinstance(value, int) or math.isfinite(value)


@dataclass
class SamplingSettings:
    """What one clip is made with; defaults are diffusers' pipeline defaults.

    Attributes:
        frames, height, width: clip size (frames; pixels).
        steps: denoising steps, 1 .. :data:`~svdtrt.runtime.limits.MAX_STEPS`.
        fps: frames per second the UNet is conditioned on (it sees fps - 1, as SVD was trained),
            within :data:`~svdtrt.runtime.limits.FPS_RANGE`; also the mp4's frame rate.
        motion_bucket_id: motion conditioning within
            :data:`~svdtrt.runtime.limits.MOTION_BUCKET_RANGE` (0-255, the training range); higher
            means more motion.
        noise_aug_strength: std of the noise added to the conditioning image; finite, >= 0.
        min_guidance_scale, max_guidance_scale: classifier-free guidance ramps linearly from the
            first to the last frame; guidance is off when ``max_guidance_scale <= 1``; finite, >= 0.
        decode_chunk_size: frames per VAE decode call (>= 1); None decodes all frames at once.
        seed: seed of the CPU ``torch.Generator`` all random numbers are drawn from, within
            :data:`~svdtrt.runtime.limits.SEED_RANGE`.
        scheduler: a name of :data:`svdtrt.runtime.schedulers.SCHEDULERS` (default SVD's Euler).
        cache_interval: block caching: the full UNet on every ``cache_interval``-th step (the
            first included), the shallow UNet on the steps between; 1 (default) = no caching,
            the ``unet`` graph every step. 1 .. :data:`~svdtrt.runtime.limits.MAX_STEPS`.
        guidance_steps: classifier-free guidance on the first K steps only, the conditional
            branch alone (batch 1) after; None (default) = every step. >= 0.
    """

    frames: int
    height: int
    width: int
    steps: int = 25
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    min_guidance_scale: float = 1.0
    max_guidance_scale: float = 3.0
    decode_chunk_size: int | None = None
    seed: int = 0
    scheduler: str = DEFAULT_SCHEDULER
    cache_interval: int = 1
    guidance_steps: int | None = None

    def check(self, dims: ModelDims) -> None:
        """Raise :class:`InputError` for settings the model cannot run or was not trained for
        (the limits above; NaN and infinities are refused everywhere)."""
        dims.check_size(self.frames, self.height, self.width)
        if not 1 <= self.steps <= MAX_STEPS:
            raise InputError(f"steps must be at least 1 and at most {MAX_STEPS} (the scheduler's training "
                             f"timesteps), got {self.steps}")
        lo, hi = FPS_RANGE
        if not (_finite(self.fps) and lo <= self.fps <= hi):
            raise InputError(f"fps must be at least {lo} and at most {hi} (SVD was trained on fps - 1 up to "
                             f"{hi - 1}), got {self.fps}")
        lo, hi = MOTION_BUCKET_RANGE
        if not (_finite(self.motion_bucket_id) and lo <= self.motion_bucket_id <= hi):
            raise InputError(f"motion bucket id must be {lo} to {hi} (SVD's training range; default 127), "
                             f"got {self.motion_bucket_id}")
        for name, value in (("noise aug strength", self.noise_aug_strength),
                            ("min guidance scale", self.min_guidance_scale),
                            ("max guidance scale", self.max_guidance_scale)):
            if not (_finite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number, 0 or more, got {value}")
        if self.decode_chunk_size is not None and self.decode_chunk_size < 1:
            raise InputError(f"decode chunk size must be at least 1, got {self.decode_chunk_size}")
        lo, hi = SEED_RANGE
        if not (isinstance(self.seed, numbers.Integral) and lo <= self.seed <= hi):
            raise InputError(f"seed must be an integer from 0 to 2**64 - 1 (what torch.Generator takes), "
                             f"got {self.seed}")
        scheduler_choice(self.scheduler)
        if not (isinstance(self.cache_interval, numbers.Integral) and 1 <= self.cache_interval <= MAX_STEPS):
            raise InputError(f"cache interval must be 1 (no caching) to {MAX_STEPS}, got {self.cache_interval}")
        if self.guidance_steps is not None and not (isinstance(self.guidance_steps, numbers.Integral)
                                                    and self.guidance_steps >= 0):
            raise InputError(f"guidance steps must be 0 or more (guidance on the first K steps), "
                             f"got {self.guidance_steps}")

    @classmethod
    def for_bundle(cls, bundle, refuse_outside_range: str | None, profile=None, **given) -> SamplingSettings:
        """The settings of a clip from ``bundle`` with the values ``given`` over a profile's, checked.

        Args:
            bundle: the opened :class:`~svdtrt.bundle.store.Bundle`: its default clip size, model
                dims and exported size range are read.
            refuse_outside_range: the advice that ends the :class:`InputError` refusing a clip
                size outside the bundle's exported range (``"<the range>; <advice>"``); None lets
                such a size through (``svdtrt run --allow-outside-range``: ONNX Runtime may take it,
                TensorRT engines built for the bundle's profiles refuse it).
            profile: the ``settings`` of a bundle's named profile
                (:class:`~svdtrt.bundle.manifest.ProfileSettings`, ``svdtrt tune``), or None: its
                ``scheduler``, ``cache_interval`` and ``guidance_steps`` stand where ``given`` has
                None, and its ``steps`` too while the scheduler is the profile's (another
                scheduler takes its own default). None keeps the defaults: the exact clip.
            given: values of this class's fields by name; None, or left out, takes the profile's
                value, else the default: the bundle's default clip size (the optimal shape of its
                ranges) for ``frames``, ``height`` and ``width``, the scheduler's default for
                ``steps`` (:data:`~svdtrt.runtime.schedulers.SCHEDULERS`), and this class's
                default for the rest.
        Raises:
            InputError: an unknown scheduler, a setting outside its limits (:meth:`check`), or,
                with ``refuse_outside_range``, a clip size outside the bundle's exported range.
        """
        values = {name: value for name, value in given.items() if value is not None}
        if profile is not None:
            work = {"scheduler": profile.scheduler, "cache_interval": profile.cache_interval,
                    "guidance_steps": profile.guidance_steps}
            if values.get("scheduler", profile.scheduler) == profile.scheduler:
                work["steps"] = profile.steps
            values = {**{k: v for k, v in work.items() if v is not None}, **values}
        frames, height, width = bundle.default_shape
        steps = scheduler_choice(values.get("scheduler", DEFAULT_SCHEDULER)).default_steps
        settings = cls(**{"frames": frames, "height": height, "width": width, "steps": steps, **values})
        settings.check(bundle.dims)
        outside = bundle.outside_range(settings.frames, settings.height, settings.width)
        if outside and refuse_outside_range is not None:
            raise InputError(f"{outside}; {refuse_outside_range}")
        return settings

    @property
    def full_compute(self) -> bool:
        """True when nothing is skipped: no block caching and guidance on every step (the clip
        diffusers' pipeline makes with the same scheduler)."""
        return self.cache_interval == 1 and (self.guidance_steps is None or self.guidance_steps >= self.steps)

    def pipeline_kwargs(self) -> dict:
        """The same settings as keyword arguments of diffusers' ``StableVideoDiffusionPipeline``
        (whose scheduler is the caller's to set: :func:`~svdtrt.runtime.schedulers.make_scheduler`).

        Raises:
            InputError: block caching or guidance truncation, which diffusers' pipeline lacks.
        """
        if not self.full_compute:
            raise InputError("diffusers' pipeline has no block caching or guidance truncation: compare with "
                             "--cache-interval 1 and guidance on every step")
        import torch

        s = asdict(self)
        for key in ("scheduler", "cache_interval", "guidance_steps"):
            s.pop(key)
        return {
            "num_frames": s.pop("frames"), "num_inference_steps": s.pop("steps"),
            "generator": torch.Generator("cpu").manual_seed(s.pop("seed")), **s,
        }
