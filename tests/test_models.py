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


#: The torch.nn.init functions the process-wide patch that fast init replaced made no-ops.
_PATCHED_INIT = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


def test_fast_init_gives_the_weights_of_the_patch_it_replaced(tiny_model, monkeypatch):
    """The "init": "fast" presets (svd, svd-xt) skip the modules' own initialisers with a torch
    function mode (models/loading.py ``_SkippedInit``) instead of replacing torch.nn.init's functions
    for the whole process; on tiny's config with fast init, every tensor of every module's state
    dict is what the replaced patch gave, and torch.nn.init is left as it was."""
    import contextlib

    from svdtrt.models import loading
    from svdtrt.models.presets import PRESETS

    monkeypatch.setitem(PRESETS, "tiny-fast", {**PRESETS["tiny"], "init": "fast"})
    mode = loading._SkippedInit
    before = {n: getattr(torch.nn.init, n) for n in _PATCHED_INIT}
    new = build_preset("tiny-fast")
    assert {n: getattr(torch.nn.init, n) for n in _PATCHED_INIT} == before

    @contextlib.contextmanager
    def patched_init():  # the code fast init had before, as it was
        with monkeypatch.context() as patch:
            for n in _PATCHED_INIT:
                patch.setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
            yield

    monkeypatch.setattr(loading, "_SkippedInit", patched_init)
    old = build_preset("tiny-fast")
    for module in ("unet", "vae", "image_encoder"):
        a, b = getattr(new, module).state_dict(), getattr(old, module).state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a), module
    # fast init did run: its weights are not tiny's own initialisation
    assert not torch.equal(new.unet.conv_in.weight, tiny_model.unet.conv_in.weight)
    # and the mode skipped every random initialiser (no draw from the global generator) but filled
    # the buffers, which nothing fills later
    state = torch.random.get_rng_state()
    with mode():
        modules = [torch.nn.Linear(8, 8), torch.nn.Conv2d(4, 4, 3), torch.nn.Embedding(5, 8), torch.nn.BatchNorm2d(4)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(modules[-1].running_var, torch.ones(4))


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
