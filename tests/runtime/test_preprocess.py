import pytest
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

from svdtrt.runtime.preprocess import resize_with_antialiasing


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 3, 576, 1024), (2, 3, 100, 37), (1, 3, 200, 224)])
def test_local_resize_is_bit_identical_to_diffusers(shape):
    image = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(resize_with_antialiasing(image, (224, 224)), _resize_with_antialiasing(image, (224, 224)))
