"""calibrate, quantize and export name each long stage in their progress bars, and -v logs each
stage's wall time."""

from __future__ import annotations

import logging
import re
import shutil

import pytest

from .conftest import copy_bundle


def _info(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("svdtrt") and r.levelno == logging.INFO]


def test_quantize_names_the_calibration_pass_and_the_held_out_evaluation(calibrated_bundle, tmp_path, run_cli,
                                                                         caplog):
    from svdtrt.graphs.qdq import STAGES

    bundle = copy_bundle(calibrated_bundle, tmp_path)
    code, _, err = run_cli("quantize", bundle.path, "--precision", "int8", "-v")
    assert code == 0, err
    info = _info(caplog)
    for name in ("1/4 unet", "2/4 unet_full", "3/4 unet_shallow", "4/4 vae_decoder"):
        for stage in ("calibrating", "held-out evaluation (PyTorch)", "held-out evaluation (ONNX Runtime)"):
            label = f"quantize int8 {name}: {stage}"
            assert re.search(re.escape(label) + r"[^\r\n]*100%", err), label
        # the quantizer's stages after the last sample, and the checks after it, on the bar and in -v's log
        calibrating = f"quantize int8 {name}: calibrating"
        assert re.search(re.escape(calibrating) + r"[^\r\n]*100%[^\r\n]*" + re.escape(STAGES[2]), err), name
        for stage in (*STAGES, "checking the Q/DQ graph and typing its arithmetic"):
            assert any(m.startswith(f"quantize int8 {name}: {stage} took ") for m in info), (name, stage)
    assert any(m.startswith("quantize int8 2/4 unet_full: sharing unet's weights file took ") for m in info)


def test_calibrate_shows_a_bar_per_image(tiny_bundle, tmp_path, run_cli, caplog):
    shutil.copytree(tiny_bundle.path, tmp_path / "b")
    code, _, err = run_cli("calibrate", tmp_path / "b", "--count", "2", "--steps", "2", "-v")
    assert code == 0, err
    assert "calibrate 1/2 astronaut:" in err and "calibrate 2/2 chelsea (held out):" in err
    assert re.search(r"calibrate 2/2 chelsea \(held out\):[^\r\n]*2/2 \[", err)  # its denoising steps
    info = _info(caplog)
    for stage in ("svdtrt calibrate: loading PyTorch, diffusers and ONNX Runtime took ",
                  "building the tiny preset (seeded random weights) took ", "calibrate 1/2 astronaut: clip ",
                  f"recording and publishing bundle '{tmp_path / 'b'}' took "):
        assert any(m.startswith(stage) for m in info), stage
    assert any(m.startswith(f"bundle '{tmp_path / 'b'}': ") and " files written " in m for m in info), info


@pytest.mark.slow
def test_export_names_the_step_of_each_graph(tmp_path, run_cli, caplog):
    code, _, err = run_cli("export", "tiny", "--out", tmp_path / "b", "--components", "vae_encoder", "-v")
    assert code == 0, err
    info = _info(caplog)
    for step in ("PyTorch reference outputs", "ONNX export", "validation on ONNX Runtime", "deployability check"):
        assert f"vae_encoder: {step}" in err
        assert any(m.startswith(f"vae_encoder: {step} took ") for m in info), step
    assert any(m.startswith("svdtrt export: loading PyTorch, diffusers and the ONNX exporter took ") for m in info)
    assert any(m.startswith("validate session of vae_encoder.fp32.onnx on CPUExecutionProvider") for m in info)
    assert any(m.startswith(f"bundle '{tmp_path / 'b'}': ") and "vae_encoder.fp32.onnx" in m for m in info), info
