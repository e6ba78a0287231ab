"""The PyTorch side of each component spec: modules whose forward takes and returns exactly
the spec's named tensors, used by the exporter and by the ``torch`` runtime backend alike.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from ..specs import COMPONENTS, ComponentSpec
from .block_cache import UnetFull, UnetShallow


class ImageEncoder(torch.nn.Module):
    """``pixel_values`` [B, 3, S, S] (CLIP-normalised) -> ``image_embeds`` [B, D]."""

    def __init__(self, image_encoder: torch.nn.Module):
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, pixel_values):
        return self.image_encoder(pixel_values).image_embeds


class VaeEncoder(torch.nn.Module):
    """``image`` [B, 3, H, W] in [-1, 1] -> ``latents`` [B, C, h, w], the posterior's mode, unscaled
    (what diffusers' SVD pipeline uses: ``vae.encode(image).latent_dist.mode()``)."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image).latent_dist.mode()


class Unet(torch.nn.Module):
    """``sample`` [B, F, 2C, h, w], ``timestep`` [B], ``encoder_hidden_states`` [B, 1, D],
    ``added_time_ids`` [B, 3] -> ``noise_pred`` [B, F, C, h, w]."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         added_time_ids=added_time_ids, return_dict=False)[0]


class VaeDecoder(torch.nn.Module):
    """``latents`` [N, C, h, w], already divided by the scaling factor -> ``frames`` [N, 3, H, W] in
    about [-1, 1]. The temporal decoder mixes the N frames of the chunk, so N is read from
    the input's shape (it stays a dynamic axis in the exported graph)."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents, num_frames=latents.shape[0]).sample


#: Inputs a module takes in float32 whatever its dtype, as in diffusers' fp16 pipeline: the
#: scheduler's timesteps are float32 and the UNet's sinusoidal time projection computes in
#: float32 (``get_timestep_embedding``); ``added_time_ids`` follow the module's dtype there.
FP32_INPUTS = frozenset({"timestep"})


def torch_modules(model, dims=None) -> dict[str, torch.nn.Module]:
    """Spec-shaped modules of an :class:`svdtrt.models.loading.SvdModel`, keyed by component name; the
    block-caching pair at the cache depth and layer of ``dims`` (a :class:`svdtrt.specs.ModelDims`,
    default ``model.dims``)."""
    branch = ((dims or model.dims).cache_depth, (dims or model.dims).cache_layer)
    return {
        "image_encoder": ImageEncoder(model.image_encoder).eval(),
        "vae_encoder": VaeEncoder(model.vae).eval(),
        "unet": Unet(model.unet).eval(),
        "vae_decoder": VaeDecoder(model.vae).eval(),
        "unet_full": UnetFull(model.unet, *branch).eval(),
        "unet_shallow": UnetShallow(model.unet, *branch).eval(),
    }


def example_inputs(spec: ComponentSpec, sizes: Mapping[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded inputs of realistic range for tracing and validating ``spec`` at ``sizes``.

    Latents and images are standard normal; ``timestep`` is SVD's first continuous timestep
    (0.25 * ln(700), EulerDiscreteScheduler with ``timestep_type="continuous"``);
    ``added_time_ids`` are the pipeline defaults (fps - 1 = 6, motion bucket 127, noise 0.02).
    Returns float32 CPU tensors in spec order.
    """
    g = torch.Generator("cpu").manual_seed(seed)
    inputs = {}
    for t in spec.inputs:
        shape = t.shape(sizes)
        if t.name == "timestep":
            inputs[t.name] = torch.full(shape, 0.25 * math.log(700.0))
        elif t.name == "added_time_ids":
            inputs[t.name] = torch.tensor([6.0, 127.0, 0.02]).expand(shape).clone()
        else:
            inputs[t.name] = torch.randn(shape, generator=g)
    return inputs


__all__ = ["COMPONENTS", "torch_modules", "example_inputs"]
