import pytest

from svdtrt.errors import InputError
from svdtrt.specs import COMPONENTS, ModelDims, component, profile_shapes

DIMS = ModelDims(latent_channels=4, embed_dim=1024, latent_scale=8, unet_downsamples=3,
                 scaling_factor=0.18215, default_frames=25)


def test_shapes_follow_design_table_at_release_size():
    sizes = DIMS.sizes(batch=2, frames=25, height=576, width=1024)
    unet = COMPONENTS["unet"]
    assert [t.shape(sizes) for t in unet.inputs] == [(2, 25, 8, 72, 128), (2,), (2, 1, 1024), (2, 3)]
    assert unet.outputs[0].shape(sizes) == (2, 25, 4, 72, 128)
    assert COMPONENTS["image_encoder"].inputs[0].shape(sizes) == (2, 3, 224, 224)
    assert COMPONENTS["vae_decoder"].outputs[0].shape(DIMS.sizes(1, 25, 576, 1024, chunk=7)) == (7, 3, 576, 1024)


def test_dynamic_axes_are_batch_frames_and_spatial():
    unet = COMPONENTS["unet"]
    assert unet.inputs[0].dynamic_axes() == {0: "B", 1: "F", 3: "h", 4: "w"}
    assert unet.inputs[1].dynamic_axes() == {0: "B"}
    assert COMPONENTS["vae_decoder"].inputs[0].dynamic_axes() == {0: "N", 2: "h", 3: "w"}


def test_profile_shapes_cover_guidance_batch_and_decode_chunks():
    prof = profile_shapes(COMPONENTS["unet"], DIMS, (14, 25, 25), (576, 576, 576), (512, 1024, 1024))
    assert prof["sample"] == {"min": [1, 14, 8, 72, 64], "opt": [2, 25, 8, 72, 128], "max": [2, 25, 8, 72, 128]}
    dec = profile_shapes(COMPONENTS["vae_decoder"], DIMS, (14, 25, 25), (576,) * 3, (1024,) * 3)
    assert dec["latents"]["min"][0] == 1 and dec["latents"]["max"][0] == 25


@pytest.mark.parametrize("frames,height,width", [(0, 576, 1024), (25, 570, 1024), (25, 576, 1000), (25, 32, 1024)])
def test_check_size_rejects_what_the_model_cannot_take(frames, height, width):
    with pytest.raises(InputError):
        DIMS.check_size(frames, height, width)


def test_check_size_accepts_multiples_of_latent_scale_times_downsampling():
    assert DIMS.pixel_multiple == 64
    DIMS.check_size(1, 64, 128)


def test_unknown_component_is_an_input_error():
    with pytest.raises(InputError, match="unknown component 'text_encoder'"):
        component("text_encoder")

