"""The block-caching modules against diffusers' UNet, at every branch a UNet allows: the full
module's noise_pred is the UNet's, bit for bit, and the shallow module on the full module's
deep feature gives the same noise_pred again (what a cached step computes when nothing moved)."""

import pytest
import torch

from svdtrt.errors import InputError
from svdtrt.models.block_cache import UnetFull, UnetShallow, max_cache_depth
from svdtrt.models.loading import load_model
from svdtrt.models.modules import Unet, example_inputs
from svdtrt.specs import COMPONENTS, ModelDims, up_block_layers


def _branches(unet_config):
    return [(d, j) for d in range(1, max_cache_depth(unet_config) + 1) for j in range(up_block_layers(unet_config, d))]


@pytest.fixture(scope="module")
def mid_model():
    """The mid preset (3 levels: two cache depths) with seeded random weights."""
    return load_model("mid")


@pytest.mark.parametrize("preset", ["tiny", "mid"])
def test_every_branch_reproduces_the_unet_bit_for_bit(preset, tiny_model, mid_model):
    model = tiny_model if preset == "tiny" else mid_model
    branches = _branches(model.unet.config)
    assert len(branches) == {"tiny": 2, "mid": 4}[preset]  # depths x layers of the preset's UNet
    for depth, layer in branches:
        dims = ModelDims.from_configs(model.unet.config, model.vae.config, model.image_encoder.config.to_dict(),
                                      depth, layer)
        inputs = example_inputs(COMPONENTS["unet"], dims.sizes(2, 3, 64, 64), seed=depth * 10 + layer)
        with torch.no_grad():
            expected = Unet(model.unet)(**inputs)
            noise_pred, deep = UnetFull(model.unet, depth, layer)(**inputs)
            shallow = UnetShallow(model.unet, depth, layer)(**inputs, deep_feature=deep)
        assert torch.equal(noise_pred, expected), (depth, layer)
        assert torch.equal(shallow, expected), (depth, layer)
        assert list(deep.shape) == [2, 3, dims.deep_channels, dims.sizes(2, 3, 64, 64)["hk"],
                                    dims.sizes(2, 3, 64, 64)["wk"]]


def test_a_later_layer_leaves_less_to_the_shallow_unet(tiny_model):
    from torch.utils.flop_counter import FlopCounterMode

    dims = tiny_model.dims
    inputs = example_inputs(COMPONENTS["unet"], dims.sizes(1, 2, 64, 64))
    flops = []
    for layer in range(up_block_layers(tiny_model.unet.config, 1)):
        with torch.no_grad():
            deep = UnetFull(tiny_model.unet, 1, layer)(**inputs)[1]
            with FlopCounterMode(display=False) as counter:
                UnetShallow(tiny_model.unet, 1, layer)(**inputs, deep_feature=deep)
        flops.append(counter.get_total_flops())
    assert flops == sorted(flops, reverse=True) and flops[-1] < flops[0]


def test_a_branch_the_unet_lacks_is_refused(tiny_model):
    config = tiny_model.unet.config
    layers = up_block_layers(config, 1)
    with pytest.raises(ValueError, match="cache layer must be 0 to"):
        UnetFull(tiny_model.unet, 1, layers)
    with pytest.raises(ValueError, match="cache depth must be 1 to"):
        UnetShallow(tiny_model.unet, max_cache_depth(config) + 1)
    with pytest.raises(InputError, match="cache layer must be 0 to"):
        ModelDims.from_configs(config, tiny_model.vae.config, tiny_model.image_encoder.config.to_dict(), 1, layers)
