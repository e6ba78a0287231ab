"""Block caching (DeepCache) as two PyTorch modules that export to graphs: the full UNet that
also returns its deep feature, and the shallow UNet that consumes it.

DeepCache (Ma, Fang and Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024,
section 3.2) observes that a UNet's deep features change little between neighbouring denoising
steps: on a *full* step the whole UNet runs and the feature entering the skip branch is kept (the
deep feature); on the *cached* steps in between only the shallow part runs, the kept deep feature
standing in for everything below it.

Where the branch is (docs/architecture.md, "Block caching"): the deep feature enters layer ``j``
(cache layer, ``export --cache-layer``) of up block ``n - d`` (cache depth ``d``, ``export
--cache-depth``; ``n`` up blocks). At ``j = 0`` it is the block's input and the shallow part is
``conv_in``, the first ``d`` down blocks, the last ``d`` up blocks and the output head. At
``j > 0`` the first ``j`` layers of up block ``n - d`` are cached too, and so are the down layers
whose skips only they read: DeepCache's finer skip branches (its code's ``cache_block_id``).
The skip connections the shallow up layers read come from ``conv_in`` and the down layers the
shallow UNet recomputes, so only the deep feature is reused.

Shapes: the deep feature is ``[B, F, K, hk, wk]`` with ``hk = h / 2**(d - 1)`` and ``K =
block_out_channels[d]`` at ``j = 0`` (the output of the up block below), ``block_out_channels[d - 1]``
at ``j > 0`` (:meth:`svdtrt.specs.ModelDims.sizes`), reshaped from diffusers' ``[B * F, K, hk, wk]``
so that batch and frames stay separate dynamic axes.

Both modules run diffusers' ``UNetSpatioTemporalConditionModel`` submodules in the order its
``forward`` and its blocks' ``forward`` run them (diffusers 0.42, ``unet_spatio_temporal_condition.py``
and ``unet_3d_blocks.py``), so the full module's ``noise_pred`` is bit-identical to the UNet's and
the shallow module on the full step's deep feature reproduces it exactly, at every branch
(``tests/test_block_cache.py``).
"""

from __future__ import annotations

import torch

from ..specs import DEFAULT_CACHE_DEPTH, up_block_layers


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


def _layers(block):
    """An up or down block's (resnet, attention or None) pairs, in the order its forward runs them."""
    return list(zip(block.resnets, getattr(block, "attentions", None) or [None] * len(block.resnets)))


def _run_layer(resnet, attn, hidden, emb, encoder_hidden_states, indicator):
    hidden = resnet(hidden, emb, image_only_indicator=indicator)
    if attn is not None:
        hidden = attn(hidden, encoder_hidden_states=encoder_hidden_states, image_only_indicator=indicator,
                      return_dict=False)[0]
    return hidden


def _up_block_layers(block, hidden, skips, layers: range, emb, encoder_hidden_states, indicator):
    """Layers ``layers`` of an up block as its forward runs them (diffusers' ``UpBlockSpatioTemporal``
    / ``CrossAttnUpBlockSpatioTemporal``): each concatenates the last of ``skips`` to its input.
    Returns ``(hidden, skips left)``; the block's upsampler is :func:`_upsample`'s."""
    pairs = _layers(block)
    for k in layers:
        hidden = torch.cat([hidden, skips[-1]], dim=1)
        skips = skips[:-1]
        hidden = _run_layer(*pairs[k], hidden, emb, encoder_hidden_states, indicator)
    return hidden, skips


def _upsample(block, hidden):
    # upsample_size is None: every size svdtrt runs is a multiple of the UNet's overall
    # downsampling (ModelDims.check_size), where diffusers passes None too.
    for upsampler in block.upsamplers or ():
        hidden = upsampler(hidden, None)
    return hidden


class UnetFull(torch.nn.Module):
    """The whole UNet, returning the deep feature too.

    ``sample`` [B, F, 2C, h, w], ``timestep`` [B], ``encoder_hidden_states`` [B, 1, D],
    ``added_time_ids`` [B, 3] -> (``noise_pred`` [B, F, C, h, w], ``deep_feature`` [B, F, K, hk, wk]).

    Args:
        unet: diffusers' ``UNetSpatioTemporalConditionModel``.
        depth: cache depth ``d`` (1 .. :func:`max_cache_depth`).
        layer: cache layer ``j``: the deep feature enters layer ``j`` of up block ``n - d``
            (0 .. :func:`up_block_layers` - 1; 0 = the block's input).
    Raises:
        ValueError: ``depth`` or ``layer`` out of range.
    """

    def __init__(self, unet: torch.nn.Module, depth: int = DEFAULT_CACHE_DEPTH, layer: int = 0):
        super().__init__()
        self.unet, (self.depth, self.layer) = unet, _checked_branch(unet, depth, layer)

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids):
        unet = self.unet
        batch_size, num_frames = sample.shape[:2]
        emb, encoder_hidden_states, hidden, indicator = _stem(unet, sample, timestep, encoder_hidden_states,
                                                              added_time_ids)
        context = (emb, encoder_hidden_states, indicator)
        skips = (hidden,)
        for block in unet.down_blocks:
            hidden, res = _call_block(block, hidden, *context)
            skips += res
        hidden = unet.mid_block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states,
                                image_only_indicator=indicator)
        first_shallow = len(unet.up_blocks) - self.depth
        for block in unet.up_blocks[:first_shallow]:
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            hidden = _call_block(block, hidden, *context, res_hidden_states_tuple=res, upsample_size=None)
        # The block the deep feature enters, layer by layer, so that the feature can be kept.
        block = unet.up_blocks[first_shallow]
        hidden, skips = _up_block_layers(block, hidden, skips, range(self.layer), *context)
        deep = hidden
        hidden, skips = _up_block_layers(block, hidden, skips, range(self.layer, len(block.resnets)), *context)
        hidden = _upsample(block, hidden)
        for block in unet.up_blocks[first_shallow + 1:]:
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            hidden = _call_block(block, hidden, *context, res_hidden_states_tuple=res, upsample_size=None)
        noise_pred = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        return (noise_pred.reshape(batch_size, num_frames, *noise_pred.shape[1:]),
                deep.reshape(batch_size, num_frames, *deep.shape[1:]))


class UnetShallow(torch.nn.Module):
    """The shallow blocks only, on a deep feature kept from a full step.

    ``sample`` [B, F, 2C, h, w], ``timestep`` [B], ``encoder_hidden_states`` [B, 1, D],
    ``added_time_ids`` [B, 3], ``deep_feature`` [B, F, K, hk, wk] -> ``noise_pred`` [B, F, C, h, w].

    Of down block ``d - 1`` only the layers whose outputs the remaining up layers read run (all
    of them at layer 0, none at the last layer), and never its downsampler, whose output feeds
    only the deep blocks. Args and errors as :class:`UnetFull`.
    """

    def __init__(self, unet: torch.nn.Module, depth: int = DEFAULT_CACHE_DEPTH, layer: int = 0):
        super().__init__()
        self.unet, (self.depth, self.layer) = unet, _checked_branch(unet, depth, layer)

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, deep_feature):
        unet = self.unet
        batch_size, num_frames = sample.shape[:2]
        emb, encoder_hidden_states, hidden, indicator = _stem(unet, sample, timestep, encoder_hidden_states,
                                                              added_time_ids)
        context = (emb, encoder_hidden_states, indicator)
        skips = (hidden,)
        for block in unet.down_blocks[:self.depth - 1]:
            hidden, res = _call_block(block, hidden, *context)
            skips += res
        # Up block n - d reads one skip per layer, the last layers the earliest: from layer j on
        # it reads the level's input and the outputs of the first (layers - 1 - j) down layers.
        up = unet.up_blocks[len(unet.up_blocks) - self.depth]
        for resnet, attn in _layers(unet.down_blocks[self.depth - 1])[:len(up.resnets) - 1 - self.layer]:
            hidden = _run_layer(resnet, attn, hidden, *context)
            skips += (hidden,)
        hidden, skips = _up_block_layers(up, deep_feature.flatten(0, 1), skips,
                                         range(self.layer, len(up.resnets)), *context)
        hidden = _upsample(up, hidden)
        for block in unet.up_blocks[len(unet.up_blocks) - self.depth + 1:]:
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            hidden = _call_block(block, hidden, *context, res_hidden_states_tuple=res, upsample_size=None)
        noise_pred = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        return noise_pred.reshape(batch_size, num_frames, *noise_pred.shape[1:])


def _checked_branch(unet: torch.nn.Module, depth: int, layer: int) -> tuple[int, int]:
    """``(depth, layer)``, or ValueError when either is out of range for this UNet."""
    if not 1 <= depth <= max_cache_depth(unet.config):
        raise ValueError(f"cache depth must be 1 to {max_cache_depth(unet.config)} for this UNet, got {depth}")
    layers = up_block_layers(unet.config, depth)
    if not 0 <= layer < layers:
        raise ValueError(f"cache layer must be 0 to {layers - 1} at cache depth {depth} for this UNet, got {layer}")
    return depth, layer


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
