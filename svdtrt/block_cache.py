"""Block caching (DeepCache) as two PyTorch modules that export to graphs: the full UNet that
also returns its deep feature, and the shallow UNet that consumes it.

DeepCache (Ma, Fang and Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024,
section 3.2) observes that a UNet's deep features change little between neighbouring denoising
steps: on a *full* step the whole UNet runs and the input of up block ``n - d`` (the deep
feature; ``n`` up blocks, cache depth ``d``) is kept; on the *cached* steps in between only
the shallow blocks run (``conv_in``, the first ``d`` down blocks, the last ``d`` up blocks and
the output head), the kept deep feature standing in for everything below them. The skip
connections the last ``d`` up blocks read come from ``conv_in`` and the first ``d`` down
blocks, which the shallow UNet recomputes, so only the deep feature is reused.

Shapes: the deep feature is ``[B, F, K, hk, wk]`` with ``K = block_out_channels[d]`` and
``hk = h / 2**(d - 1)`` (:meth:`svdtrt.specs.ModelDims.sizes`), reshaped from diffusers'
``[B * F, K, hk, wk]`` so that batch and frames stay separate dynamic axes.

Both modules run diffusers' ``UNetSpatioTemporalConditionModel`` submodules in the order its
``forward`` runs them (diffusers 0.42, ``unet_spatio_temporal_condition.py``), so the full
module's ``noise_pred`` is bit-identical to the UNet's and the shallow module on the full step's
deep feature reproduces it exactly (``tests/test_block_cache.py``).
"""

from __future__ import annotations

import torch

from .specs import DEFAULT_CACHE_DEPTH


def max_cache_depth(unet_config) -> int:
    """The deepest cache depth a UNet allows: its number of levels minus one (the deep feature
    must enter an up block that follows another up block)."""
    return len(unet_config["block_out_channels"]) - 1


def _embeddings(unet, sample, timestep, added_time_ids):
    """diffusers' step 1 of the UNet's forward: the time and added-time embedding per frame."""
    batch_size, num_frames = sample.shape[:2]
    timesteps = timestep.expand(batch_size)
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=sample.dtype))
    time_embeds = unet.add_time_proj(added_time_ids.flatten()).reshape((batch_size, -1)).to(emb.dtype)
    emb = emb + unet.add_embedding(time_embeds)
    return emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)


def _call_block(block, hidden_states, emb, encoder_hidden_states, indicator, **kwargs):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=hidden_states, temb=emb, encoder_hidden_states=encoder_hidden_states,
                     image_only_indicator=indicator, **kwargs)
    return block(hidden_states=hidden_states, temb=emb, image_only_indicator=indicator, **kwargs)


class UnetFull(torch.nn.Module):
    """The whole UNet, returning the deep feature too.

    ``sample`` [B, F, 2C, h, w], ``timestep`` [B], ``encoder_hidden_states`` [B, 1, D],
    ``added_time_ids`` [B, 3] -> (``noise_pred`` [B, F, C, h, w], ``deep_feature`` [B, F, K, hk, wk]).

    Args:
        unet: diffusers' ``UNetSpatioTemporalConditionModel``.
        depth: cache depth ``d`` (1 .. :func:`max_cache_depth`).
    """

    def __init__(self, unet: torch.nn.Module, depth: int = DEFAULT_CACHE_DEPTH):
        super().__init__()
        self.unet, self.depth = unet, _checked_depth(unet, depth)

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids):
        unet = self.unet
        batch_size, num_frames = sample.shape[:2]
        emb, encoder_hidden_states, hidden, indicator = _stem(unet, sample, timestep, encoder_hidden_states,
                                                              added_time_ids)
        skips = (hidden,)
        for block in unet.down_blocks:
            hidden, res = _call_block(block, hidden, emb, encoder_hidden_states, indicator)
            skips += res
        hidden = unet.mid_block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                image_only_indicator=indicator)
        deep = None
        first_shallow = len(unet.up_blocks) - self.depth
        for i, block in enumerate(unet.up_blocks):
            if i == first_shallow:
                deep = hidden
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            # upsample_size is None: every size svdtrt runs is a multiple of the UNet's overall
            # downsampling (ModelDims.check_size), where diffusers passes None too.
            hidden = _call_block(block, hidden, emb, encoder_hidden_states, indicator, res_hidden_states_tuple=res,
                                 upsample_size=None)
        noise_pred = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        return (noise_pred.reshape(batch_size, num_frames, *noise_pred.shape[1:]),
                deep.reshape(batch_size, num_frames, *deep.shape[1:]))


class UnetShallow(torch.nn.Module):
    """The shallow blocks only, on a deep feature kept from a full step.

    ``sample`` [B, F, 2C, h, w], ``timestep`` [B], ``encoder_hidden_states`` [B, 1, D],
    ``added_time_ids`` [B, 3], ``deep_feature`` [B, F, K, hk, wk] -> ``noise_pred`` [B, F, C, h, w].

    The last shallow down block's downsampler is skipped: its output feeds only the deep blocks.
    """

    def __init__(self, unet: torch.nn.Module, depth: int = DEFAULT_CACHE_DEPTH):
        super().__init__()
        self.unet, self.depth = unet, _checked_depth(unet, depth)

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, deep_feature):
        unet = self.unet
        batch_size, num_frames = sample.shape[:2]
        emb, encoder_hidden_states, hidden, indicator = _stem(unet, sample, timestep, encoder_hidden_states,
                                                              added_time_ids)
        skips = (hidden,)
        for i, block in enumerate(unet.down_blocks[:self.depth]):
            if i < self.depth - 1:
                hidden, res = _call_block(block, hidden, emb, encoder_hidden_states, indicator)
                skips += res
            else:
                skips += _down_block_without_downsampler(block, hidden, emb, encoder_hidden_states, indicator)
        hidden = deep_feature.flatten(0, 1)
        for block in unet.up_blocks[len(unet.up_blocks) - self.depth:]:
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            hidden = _call_block(block, hidden, emb, encoder_hidden_states, indicator, res_hidden_states_tuple=res,
                                 upsample_size=None)
        noise_pred = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        return noise_pred.reshape(batch_size, num_frames, *noise_pred.shape[1:])


def _down_block_without_downsampler(block, hidden, emb, encoder_hidden_states, indicator) -> tuple:
    """The skip outputs of a down block's resnets (and attentions), as its forward computes them,
    without its downsampler (diffusers' ``DownBlockSpatioTemporal`` / ``CrossAttnDownBlockSpatioTemporal``)."""
    outputs = ()
    attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
    for resnet, attn in zip(block.resnets, attentions):
        hidden = resnet(hidden, emb, image_only_indicator=indicator)
        if attn is not None:
            hidden = attn(hidden, encoder_hidden_states=encoder_hidden_states, image_only_indicator=indicator,
                          return_dict=False)[0]
        outputs += (hidden,)
    return outputs


def _checked_depth(unet: torch.nn.Module, depth: int) -> int:
    """``depth``, or ValueError when it is outside 1 .. :func:`max_cache_depth`."""
    if not 1 <= depth <= max_cache_depth(unet.config):
        raise ValueError(f"cache depth must be 1 to {max_cache_depth(unet.config)} for this UNet, got {depth}")
    return depth


def _stem(unet, sample, timestep, encoder_hidden_states, added_time_ids):
    """What both graphs compute first, as diffusers' UNet does: the time embedding, the image
    embedding repeated per frame, ``conv_in`` on the flattened frames and the image-only indicator.
    Returns ``(emb, encoder_hidden_states [B*F, 1, D], hidden [B*F, C0, h, w], indicator [B, F])``."""
    batch_size, num_frames = sample.shape[:2]
    emb = _embeddings(unet, sample, timestep, added_time_ids)
    encoder_hidden_states = encoder_hidden_states.repeat_interleave(
        num_frames, dim=0, output_size=encoder_hidden_states.shape[0] * num_frames)
    hidden = unet.conv_in(sample.flatten(0, 1))
    indicator = torch.zeros(batch_size, num_frames, dtype=hidden.dtype, device=hidden.device)
    return emb, encoder_hidden_states, hidden, indicator
