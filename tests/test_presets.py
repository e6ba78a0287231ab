"""The built-in presets: each builds, and ``mid`` is the larger benchmark model it claims to be."""

from svdtrt.models.loading import load_model
from svdtrt.models.presets import PRESETS


def test_mid_is_bigger_than_small_and_runs_its_default_shape():
    mid, small = load_model("mid"), load_model("small")
    count = lambda m: sum(p.numel() for p in m.unet.parameters())  # noqa: E731
    assert count(mid) > 2 * count(small)
    frames, height, width = mid.default_shape
    mid.dims.check_size(frames, height, width)
    assert (frames, height, width) == (8, 128, 128)
    assert "8 frames at 128x128" in PRESETS["mid"]["description"]
