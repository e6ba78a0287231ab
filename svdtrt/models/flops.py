"""FLOPs of the UNet calls of a clip, counted, not estimated: PyTorch's FLOP counter
(``torch.utils.flop_counter.FlopCounterMode``) over the components' PyTorch modules
(the ones the graphs are exported from), built from the model's UNet config on the meta device
(no weights, no memory, no arithmetic: a svd-xt call at 576x1024 is counted in under a second).

The counter counts 2 FLOPs per multiply-add of convolutions and matrix products (attention's
included, as batched matrix products); element-wise work (normalisation, activations, softmax)
is not counted, which is how FLOPs of diffusion models are reported.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache

from ..specs import COMPONENTS, ModelDims


@lru_cache(maxsize=4)
def _meta_unet(config_json: str):
    import torch
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(json.loads(config_json))
    return unet.to("meta").eval()  # a few buffers are created on the CPU whatever the default device


def unet_call_flops(unet_config: dict, dims: ModelDims, component: str, batch: int, frames: int, height: int,
                    width: int) -> int:
    """FLOPs of one call of UNet component ``component`` (``unet``, ``unet_full``, ``unet_shallow``)
    at batch ``batch`` and clip size ``frames`` x ``height`` x ``width`` (pixels).

    Args:
        unet_config: the UNet's config (``bundle.manifest.configs["unet"]``).
        dims: the model's dims (the block-caching depth and layer included).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .block_cache import UnetFull, UnetShallow
    from .modules import Unet

    unet = _meta_unet(json.dumps(unet_config, sort_keys=True))
    branch = (dims.cache_depth, dims.cache_layer)
    module = {"unet": Unet, "unet_full": lambda u: UnetFull(u, *branch),
              "unet_shallow": lambda u: UnetShallow(u, *branch)}[component](unet)
    sizes = dims.sizes(batch, frames, height, width)
    inputs = [torch.empty(t.shape(sizes), device="meta") for t in COMPONENTS[component].inputs]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


def clip_unet_flops(unet_config: dict, dims: ModelDims, calls: list[tuple[str, int]], frames: int, height: int,
                    width: int) -> dict:
    """The UNet work of one clip from its calls (``Clip.unet_calls``: (component, batch) pairs).

    Returns:
        ``{"unet_calls": n, "unet_flops": total, "graphs": {"<component> batch <B>": {"calls",
        "flops_per_call"}}}``, FLOPs counted per graph and batch at the clip's size.
    """
    graphs = {}
    total = 0
    for (component, batch), n in Counter(map(tuple, calls)).items():
        per_call = unet_call_flops(unet_config, dims, component, batch, frames, height, width)
        graphs[f"{component} batch {batch}"] = {"calls": n, "flops_per_call": per_call}
        total += n * per_call
    return {"unet_calls": len(calls), "unet_flops": total, "graphs": graphs}
