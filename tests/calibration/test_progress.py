"""calibrate, quantize and export name each long stage in their progress bars."""

from __future__ import annotations

import re
import shutil

import pytest

from .conftest import copy_bundle


def test_quantize_names_the_calibration_pass_and_the_held_out_evaluation(calibrated_bundle, tmp_path, run_cli):
    bundle = copy_bundle(calibrated_bundle, tmp_path)
    code, out, err = run_cli("quantize", bundle.path, "--precision", "int8")
    assert code == 0, err
    for name in ("1/4 unet", "2/4 unet_full", "3/4 unet_shallow", "4/4 vae_decoder"):
        for stage in ("calibrating", "held-out evaluation (PyTorch)", "held-out evaluation (ONNX Runtime)"):
            label = f"quantize int8 {name}: {stage}"
            assert re.search(re.escape(label) + r"[^\r\n]*100%", err), label


def test_calibrate_shows_a_bar_per_image(tiny_bundle, tmp_path, run_cli):
    shutil.copytree(tiny_bundle.path, tmp_path / "b")
    code, _, err = run_cli("calibrate", tmp_path / "b", "--count", "2", "--steps", "2")
    assert code == 0, err
    assert "calibrate 1/2 astronaut:" in err and "calibrate 2/2 chelsea (held out):" in err
    assert "2/2 [" in err.split("calibrate 2/2 chelsea (held out):")[-1]  # its denoising steps


@pytest.mark.slow
def test_export_names_the_step_of_each_graph(tmp_path, run_cli):
    code, _, err = run_cli("export", "tiny", "--out", tmp_path / "b", "--components", "vae_encoder")
    assert code == 0, err
    for step in ("PyTorch reference outputs", "ONNX export", "validation on ONNX Runtime", "deployability check"):
        assert f"vae_encoder: {step}" in err
