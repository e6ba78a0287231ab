"""SVD's sampling loop over any backend, with diffusers' semantics and random-number order.

The loop follows ``StableVideoDiffusionPipeline.__call__`` (diffusers 0.42) step by step and
reuses diffusers' own schedulers (SVD's ``EulerDiscreteScheduler`` by default; others from
:mod:`svdtrt.runtime.schedulers`), ``VideoProcessor`` and ``randn_tensor``, so with the same seed
it produces the same clip as diffusers does with ``generator=torch.Generator("cpu").manual_seed(seed)``;
``tests/runtime/test_pipeline.py`` holds it to that.

Two settings do less work than diffusers' loop, and at their neutral values change nothing:
guidance truncation (``guidance_steps``: the conditional branch alone, a batch-1 UNet call,
after the first K steps) and block caching (``cache_interval``: DeepCache, the full UNet every
N-th step and the shallow UNet on its kept deep feature in between; :mod:`svdtrt.models.block_cache`).

What a clip is made with is :class:`~svdtrt.runtime.settings.SamplingSettings` (importable from here
too, as before it had a module of its own).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from tqdm import tqdm
from transformers import CLIPImageProcessor

from .. import hints
from ..errors import ClipCancelled, NumericalError
from ..media.images import check_image_size
from ..progress import ticking
from ..specs import CLIP_INPUT_SIZE, ModelDims
from .backends import Backend
from .preprocess import resize_with_antialiasing
from .schedulers import make_scheduler, step_kwargs
from .settings import SamplingSettings

log = logging.getLogger(__name__)


class StageTimer:
    """Seconds per stage; on a GPU only when asked for, because timing one costs a sync.

    On a CPU device every stage is timed by wall clock (``time.perf_counter``): the work is done
    when a call returns, so timing is free. On a CUDA device a true stage time needs the device
    synchronised around the stage, which stalls the queue the loop otherwise keeps full, so stages
    are timed only when ``timed`` is set (``run --timings``, ``bench``), with CUDA events on
    torch's current stream recorded after the backend has synchronised (so work a backend queues
    on its own stream counts too). Untimed, a stage costs nothing and is left out of
    :meth:`summary`. Stages may nest (a denoising ``step`` holds its ``unet`` call).
    """

    def __init__(self, backend: Backend, timed: bool = False):
        self.backend = backend
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._cuda = backend.device.type == "cuda"
        self.timed = timed or not self._cuda

    @contextlib.contextmanager
    def stage(self, name: str):
        if not self.timed:
            yield
            return
        if self._cuda:
            self.backend.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        start = time.perf_counter()
        yield
        if self._cuda:
            self.backend.synchronize()
            end.record()
            end.synchronize()
            self.seconds[name].append(begin.elapsed_time(end) / 1000.0)  # elapsed_time is in ms
        else:
            self.seconds[name].append(time.perf_counter() - start)

    def summary(self) -> dict[str, float]:
        """Total seconds per stage, plus, when the loop ran:

        - ``unet_per_step``: mean seconds per UNet call;
        - ``overhead_per_step``: mean seconds per denoising step spent outside the UNet call
          (scheduler, guidance, concatenation, copies): (sum of ``step`` - sum of ``unet``) / steps.
        """
        out = {k: float(sum(v)) for k, v in self.seconds.items()}
        if self.seconds.get("unet"):
            out["unet_per_step"] = out["unet"] / len(self.seconds["unet"])
        if self.seconds.get("step"):
            out["overhead_per_step"] = (out["step"] - out.get("unet", 0.0)) / len(self.seconds["step"])
        return out


@dataclass
class Clip:
    """A generated clip: ``frames`` float32 [F, H, W, 3] in [0, 1], ``timings`` seconds per stage
    (``clip``, ``vae_encode``, ``step`` and ``unet`` summed over the steps, ``vae_decode``, and the
    per-step figures of :meth:`StageTimer.summary`; on a GPU only when the clip was made with
    ``timings=True``) and ``total``, always (the frames are on the host then, so it is true);
    ``unet_calls`` the UNet calls in order, as (component, batch) pairs (what
    :func:`svdtrt.models.flops.clip_unet_flops` counts)."""

    frames: np.ndarray
    timings: dict[str, float]
    unet_calls: list[tuple[str, int]] = field(default_factory=list)


def unet_graph(step: int, cache_interval: int) -> str:
    """The UNet component denoising step ``step`` (0-based) calls: ``unet`` without caching;
    with it, ``unet_full`` on every ``cache_interval``-th step from the first (which keeps the
    deep feature), ``unet_shallow`` in between (DeepCache's uniform schedule)."""
    if cache_interval == 1:
        return "unet"
    return "unet_full" if step % cache_interval == 0 else "unet_shallow"


def planned_unet_calls(settings: SamplingSettings, steps: int | None = None) -> list[tuple[str, int]]:
    """The (component, batch) UNet calls the loop makes for ``settings``, without sampling (for
    counting FLOPs at shapes no machine here can sample); ``steps``: the scheduler's number of
    timesteps, default ``settings.steps``. ``tests/runtime/test_work.py`` holds it to the loop's."""
    guided = settings.max_guidance_scale > 1
    calls = []
    for i in range(settings.steps if steps is None else steps):
        guide = guided and (settings.guidance_steps is None or i < settings.guidance_steps)
        calls.append((unet_graph(i, settings.cache_interval), 2 if guide else 1))
    return calls


class SvdPipeline:
    """SVD image-to-video sampling over a backend.

    Args:
        backend: a :class:`svdtrt.runtime.backends.Backend`.
        model_info: a :class:`svdtrt.bundle.store.Bundle` or :class:`svdtrt.models.loading.SvdModel`: anything
            with ``dims``, ``scheduler_config`` and ``feature_extractor_config``.
    """

    def __init__(self, backend: Backend, model_info):
        self.backend = backend
        self.dims: ModelDims = model_info.dims
        self.bundle_path = getattr(model_info, "path", None)  # for the verify hint; None for a model
        self.scheduler_config = model_info.scheduler_config
        self.video_processor = VideoProcessor(do_resize=True, vae_scale_factor=self.dims.latent_scale)
        self.feature_extractor = CLIPImageProcessor(**model_info.feature_extractor_config)

    def __call__(self, image: PIL.Image.Image, settings: SamplingSettings, progress: bool | str = False,
                 timings: bool = False, cancel: threading.Event | None = None) -> Clip:
        """Generate a clip from ``image`` (an RGB PIL image; it is resized to the clip size).

        ``progress`` shows a bar over the denoising steps, from the loading of the graphs to the
        decoded frames, its postfix naming the stage outside the steps and its clock ticking
        (:func:`svdtrt.progress.ticking`); a string is the bar's label (the stage a command is
        in), True labels it ``denoise``. It stays on the screen unless it is drawn below another
        bar (``bench``'s, over its clips).
        ``timings`` asks for per-stage seconds on a GPU, at the cost of synchronising the device
        around every stage (:class:`StageTimer`); without it the loop queues work unhindered.
        ``cancel``, once set (by another thread: the service, when a request is gone), stops the
        loop before its next denoising step.

        Raises:
            InputError: settings the model cannot run, or an image too small or too large
                (:func:`svdtrt.media.images.check_image_size`).
            ClipCancelled: ``cancel`` was set.
        """
        label = progress if isinstance(progress, str) else "denoise"
        with tqdm(total=settings.steps, desc=label, unit="step", leave=None, disable=not progress) as bar, \
                ticking(bar):
            clip = self._sample(image, settings, bar, timings, cancel)
        log.info("%s: %s", label, ", ".join(f"{k} {v:.2f} s" for k, v in clip.timings.items()))
        return clip

    def _sample(self, image: PIL.Image.Image, settings: SamplingSettings, bar, timings: bool,
                cancel: threading.Event | None) -> Clip:
        s = settings
        s.check(self.dims)
        check_image_size(image)
        device, timer = self.backend.device, StageTimer(self.backend, timed=timings)
        generator = torch.Generator("cpu").manual_seed(s.seed)
        guided = s.max_guidance_scale > 1
        bar.set_postfix_str("loading the graphs")
        encode_image = self.backend.component("image_encoder")
        encode_vae = self.backend.component("vae_encoder")
        unets = {name: self.backend.component(name) for name in
                 dict.fromkeys(unet_graph(i, s.cache_interval) for i in range(min(s.steps, 2)))}
        decode_vae = self.backend.component("vae_decoder")
        # Built before the clock starts, like the sessions above: the first scheduler of a process
        # imports diffusers' scheduler module, and with it scipy (about 0.5 s here), once per process.
        scheduler = make_scheduler(s.scheduler, self.scheduler_config)
        start = time.perf_counter()
        bar.set_postfix_str("encoding the image")

        # 1. Encode the input image with CLIP; the unconditional embedding is zeros.
        with timer.stage("clip"):
            pixels = self.video_processor.numpy_to_pt(self.video_processor.pil_to_numpy(image))
            # diffusers normalises to [-1, 1] before the anti-aliased resize and back after it
            pixels = (resize_with_antialiasing(pixels * 2.0 - 1.0, (CLIP_INPUT_SIZE,) * 2) + 1.0) / 2.0
            pixel_values = self.feature_extractor(
                images=pixels, do_normalize=True, do_center_crop=False, do_resize=False,
                do_rescale=False, return_tensors="pt").pixel_values
            image_embeds = encode_image({"pixel_values": pixel_values.to(device)})["image_embeds"]
            encoder_hidden_states = image_embeds.unsqueeze(1)
            if guided:
                encoder_hidden_states = torch.cat([torch.zeros_like(encoder_hidden_states), encoder_hidden_states])

        # 2. Encode the noise-augmented image with the VAE (first random draw).
        with timer.stage("vae_encode"):
            vae_image = self.video_processor.preprocess(image, height=s.height, width=s.width).to(device)
            noise = randn_tensor(vae_image.shape, generator=generator, device=device, dtype=vae_image.dtype)
            vae_image = vae_image + s.noise_aug_strength * noise
            image_latents = encode_vae({"image": vae_image})["latents"]
            if guided:
                image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
            image_latents = image_latents.unsqueeze(1).repeat(1, s.frames, 1, 1, 1)

        # 3. Micro-conditioning: SVD was trained on fps - 1.
        added_time_ids = torch.tensor([[s.fps - 1, s.motion_bucket_id, s.noise_aug_strength]], dtype=torch.float32)
        added_time_ids = torch.cat([added_time_ids] * (2 if guided else 1)).to(device)

        # 4. Timesteps and initial latents (second random draw), scaled by the scheduler.
        scheduler.set_timesteps(s.steps, device=device)
        latent_shape = (1, s.frames, self.dims.latent_channels,
                        s.height // self.dims.latent_scale, s.width // self.dims.latent_scale)
        latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=torch.float32)
        latents = latents * scheduler.init_noise_sigma

        # 5. Guidance scale ramps linearly over frames: [1, F, 1, 1, 1].
        guidance_scale = torch.linspace(s.min_guidance_scale, s.max_guidance_scale, s.frames)
        guidance_scale = guidance_scale.to(device)[None, :, None, None, None]

        # 6. Denoising loop: both guidance branches in one UNet batch, for the first
        #    guidance_steps steps; the conditional branch alone (the batch's second half) after.
        #    With block caching, a full step keeps the deep feature and the shallow steps after it
        #    reuse it (its conditional half once guidance has ended).
        #    Each step is timed as a whole too, so that the loop's own cost is known.
        deep_feature, unet_calls, step_options = None, [], step_kwargs(s.scheduler, generator)
        bar.total = len(scheduler.timesteps)  # a scheduler may take another count than asked
        bar.set_postfix_str("")
        for i, t in enumerate(scheduler.timesteps):
            if cancel is not None and cancel.is_set():  # nobody waits for this clip any more
                raise ClipCancelled(f"the clip was cancelled after {i} of {len(scheduler.timesteps)} steps")
            with timer.stage("step"):
                guide = guided and (s.guidance_steps is None or i < s.guidance_steps)
                branch = (lambda x: x) if guide else (lambda x: x[-1:])
                latent_model_input = torch.cat([latents] * 2) if guide else latents
                latent_model_input = scheduler.scale_model_input(latent_model_input, t)
                latent_model_input = torch.cat([latent_model_input, branch(image_latents)], dim=2)
                batch = latent_model_input.shape[0]
                inputs = {
                    "sample": latent_model_input,
                    "timestep": t.to(torch.float32).expand(batch),
                    "encoder_hidden_states": branch(encoder_hidden_states),
                    "added_time_ids": branch(added_time_ids),
                }
                graph = unet_graph(i, s.cache_interval)
                if graph == "unet_shallow":
                    inputs["deep_feature"] = deep_feature[-batch:]
                with timer.stage("unet"):
                    outputs = unets[graph](inputs)
                unet_calls.append((graph, batch))
                noise_pred = outputs["noise_pred"]
                if graph == "unet_full":
                    deep_feature = outputs["deep_feature"]
                if guide:
                    noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_cond - noise_pred_uncond)
                latents = scheduler.step(noise_pred, t, latents, **step_options).prev_sample
            bar.update()

        # 7. Decode in chunks of frames; the temporal decoder mixes frames within a chunk.
        bar.set_postfix_str("decoding the frames")
        with timer.stage("vae_decode"):
            latents = 1 / self.dims.scaling_factor * latents.flatten(0, 1)
            chunk = s.decode_chunk_size or s.frames
            frames = torch.cat([decode_vae({"latents": latents[i:i + chunk]})["frames"]
                                for i in range(0, latents.shape[0], chunk)])
            if not torch.isfinite(frames).all():
                verify = f"run '{hints.verify(self.bundle_path)}'" if self.bundle_path else "verify the bundle"
                raise NumericalError(
                    f"the {self.backend.name} backend decoded NaN or infinite values: a corrupted graph or engine "
                    f"({verify}), or an overflow in a lower "
                    "precision (try --precision fp32)")
            # [F, 3, H, W] -> [1, 3, F, H, W], the layout diffusers' VideoProcessor takes
            frames = frames.reshape(-1, s.frames, *frames.shape[1:]).permute(0, 2, 1, 3, 4).float()
            frames = self.video_processor.postprocess_video(video=frames, output_type="np")[0]

        timings = timer.summary()
        timings["total"] = time.perf_counter() - start
        return Clip(frames=np.asarray(frames, dtype=np.float32), timings=timings, unet_calls=unet_calls)
