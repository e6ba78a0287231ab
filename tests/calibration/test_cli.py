"""The command-line round trip: calibrate -> quantize -> check --precision int8 (the first two
run in the session fixtures, through the CLI)."""

from __future__ import annotations

import json


def test_check_int8_reports_against_fp32(int8_bundle, tmp_path, run_cli, photo):
    image, report_path = tmp_path / "photo.png", tmp_path / "report.json"
    photo.save(image)
    code, out, err = run_cli("check", int8_bundle.path, "--image", image, "--precision", "int8",
                             "--steps", "3", "--report", report_path)
    assert code == 0, out + err
    assert "clip vs fp32 graphs" in out and "PASSED" in out
    report = json.loads(report_path.read_text())
    assert report["precision"] == "int8" and report["end_to_end"]["reference"] == "fp32"
    assert report["qdq"]["unet"]["quantized_ops"]["Conv"] > 0
    e2e = report["end_to_end"]["vs_fp32_graphs"]
    # int8 changes the clip, but not beyond recognition (tiny preset: ~34 dB, SSIM ~0.97)
    assert 25 < e2e["min_psnr_db"] < 80 and 0.9 < e2e["min_ssim"] < 1.0
    unet = report["components"]["unet"]["noise_pred"]
    assert 0.98 < unet["cosine"] < 1.0


def test_run_int8_writes_a_clip(int8_bundle, tmp_path, run_cli, photo):
    image, out_path = tmp_path / "photo.png", tmp_path / "clip.mp4"
    photo.save(image)
    code, out, err = run_cli("run", int8_bundle.path, "--image", image, "--out", out_path,
                             "--precision", "int8", "--steps", "2")
    assert code == 0, out + err
    assert out_path.stat().st_size > 0 and "(onnxruntime, int8;" in out
