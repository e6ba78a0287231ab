import json

import pytest
import torch

from svdtrt.errors import InputError
from svdtrt.models.loading import build_preset, load_model


def test_presets_are_deterministic(tiny_model):
    again = build_preset("tiny")
    for a, b in zip(tiny_model.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)
    assert tiny_model.config_hashes() == again.config_hashes()


def test_building_a_preset_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_preset("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_dims_are_read_from_configs(tiny_model):
    small = load_model("small")
    assert tiny_model.dims.embed_dim == 32 and small.dims.embed_dim == 48
    assert tiny_model.dims.unet_downsamples == 1 and small.dims.unet_downsamples == 2
    assert small.default_shape == (6, 64, 96)


def test_diffusers_directory_round_trip(tiny_model, tmp_path):
    tiny_model.pipeline().save_pretrained(tmp_path / "svd")
    loaded = load_model(str(tmp_path / "svd"))
    assert loaded.source["kind"] == "directory"
    assert loaded.config_hashes()["unet"] == tiny_model.config_hashes()["unet"]
    assert torch.equal(loaded.unet.conv_in.weight, tiny_model.unet.conv_in.weight)


@pytest.mark.parametrize("name", ["nonexistent-preset", "tiny2", "a/b/c"])
def test_unknown_model_is_an_input_error(name):
    with pytest.raises(InputError, match="unknown model"):
        load_model(name)


def test_directory_missing_a_component(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(InputError, match="missing image_encoder, vae, scheduler, feature_extractor"):
        load_model(str(tmp_path))


def test_directory_of_another_architecture(tiny_model, tmp_path):
    tiny_model.pipeline().save_pretrained(tmp_path / "m")
    config = tmp_path / "m" / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(InputError, match="unet is a UNet2DConditionModel"):
        load_model(str(tmp_path / "m"))
