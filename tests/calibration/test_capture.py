"""Calibration capture: what is recorded, under which names and shapes, and how it is split."""

from __future__ import annotations

import numpy as np
import pytest

from svdtrt.calibration.shards import CalibrationSet
from svdtrt.errors import InputError

from ..conftest import COUNT, STEPS


def test_manifest_entry_describes_the_set(calibrated_bundle):
    entry = calibrated_bundle.manifest.calibration["default"]
    assert [i.name for i in entry.images] == ["astronaut", "chelsea"]
    assert [i.split for i in entry.images] == ["calibration", "held_out"]
    assert [i.seed for i in entry.images] == [0, 1] and entry.steps == STEPS
    assert all(len(i.sha256) == 64 for i in entry.images)
    assert entry.images[0].sha256 != entry.images[1].sha256
    assert entry.settings["frames"] == 4 and entry.settings["height"] == 64


def test_unet_samples_every_step_with_the_guidance_batch(calibrated_bundle):
    calib = CalibrationSet(calibrated_bundle, "default")
    entry = calib.entry.components["unet"]
    # one UNet call per denoising step per image; the last image is held out
    assert len(entry.calibration) == STEPS * (COUNT - 1) and len(entry.held_out) == STEPS
    assert sum(entry.per_timestep.values()) == STEPS * (COUNT - 1)
    assert len(entry.per_timestep) == STEPS  # every step has its own timestep
    samples = list(calib.samples("unet"))
    for s in samples:
        assert list(s) == ["sample", "timestep", "encoder_hidden_states", "added_time_ids"]
        assert s["sample"].shape == (2, 4, 8, 16, 16) and s["sample"].dtype == np.float32
        assert s["timestep"].shape == (2,) and s["timestep"][0] == s["timestep"][1]
        assert s["encoder_hidden_states"].shape == (2, 1, 32)
        assert not s["encoder_hidden_states"][0].any()  # the unconditional half is zeros
        np.testing.assert_allclose(s["added_time_ids"], [[6, 127, 0.02]] * 2, rtol=1e-6)
    timesteps = sorted(f"{float(s['timestep'][0]):.6g}" for s in samples)
    assert timesteps == sorted(entry.per_timestep)
    # the scheduler's timesteps decrease step by step
    assert samples[0]["timestep"][0] > samples[-1]["timestep"][0]


def test_vae_decoder_samples_are_latent_chunks(calibrated_bundle):
    calib = CalibrationSet(calibrated_bundle, "default")
    (sample,) = calib.samples("vae_decoder")
    assert list(sample) == ["latents"] and sample["latents"].shape == (4, 4, 16, 16)
    assert len(list(calib.samples("vae_decoder", "held_out"))) == 1


def test_existing_set_is_not_replaced_without_force(calibrated_bundle, tiny_model):
    from svdtrt.calibration.capture import calibrate_bundle, calibration_images

    with pytest.raises(InputError, match="already has calibration set 'default'"):
        calibrate_bundle(calibrated_bundle.path, calibration_images(count=2), steps=1, model=tiny_model)


def test_one_image_cannot_be_split(tmp_path):
    from svdtrt.calibration.capture import calibration_images

    with pytest.raises(InputError, match="at least 2"):
        calibration_images(count=1)
