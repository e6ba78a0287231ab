import copy

import pytest
import torch

from svdtrt.check.compare import check_bundle
from svdtrt.errors import BundleError
from svdtrt.export.bundle_export import export_bundle
from svdtrt.models.loading import load_model
from svdtrt.runtime.pipeline import SamplingSettings


def test_check_reports_components_and_clip_for_tiny(tiny_bundle, tiny_model, photo):
    settings = SamplingSettings(frames=4, height=64, width=64, steps=5, seed=11)
    report = check_bundle(tiny_bundle, photo, settings, model=tiny_model)
    assert report.passed, report.failures
    assert set(report.components) == {"image_encoder", "vae_encoder", "unet", "vae_decoder"}
    assert report.components["vae_decoder"]["frames"]["psnr_db"] > 60
    assert report.end_to_end.vs_diffusers["min_psnr_db"] >= 60
    assert len(report.end_to_end.vs_diffusers["psnr_db"]) == 4
    assert report.end_to_end.torch_loop_vs_diffusers["min_psnr_db"] == 200.0  # identical


def test_check_fails_when_a_graph_is_off(tiny_bundle, tiny_model, photo):
    """A source model that differs from the graphs only in weights must fail the thresholds."""
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in other.unet.parameters():
            p.mul_(1.05)
    report = check_bundle(tiny_bundle, photo, SamplingSettings(frames=4, height=64, width=64, steps=3),
                          model=other)
    assert not report.passed
    assert any(f.startswith("unet.noise_pred cosine") for f in report.failures)


def test_check_refuses_a_model_the_bundle_was_not_exported_from(tiny_bundle, photo):
    with pytest.raises(BundleError, match="config hashes differ"):
        check_bundle(tiny_bundle, photo, SamplingSettings(frames=4, height=64, width=64, steps=1),
                     model=load_model("small"))


@pytest.mark.slow
def test_second_config_meets_60_db(tmp_path, photo):
    """``small`` differs from ``tiny`` in depth, widths, frame count (6) and aspect ratio (64x96)."""
    small = load_model("small")
    bundle = export_bundle(small, tmp_path / "small", progress=False)
    frames, height, width = bundle.default_shape
    report = check_bundle(bundle, photo, SamplingSettings(frames=frames, height=height, width=width, steps=4),
                          model=small)
    assert report.passed, report.failures
    assert report.end_to_end.vs_diffusers["min_psnr_db"] >= 60
