"""``svdtrt doctor``: it runs on any machine and says what is there and what is missing."""

from __future__ import annotations

import platform
import sys

import torch

from svdtrt.cli.doctor import diagnose


def test_doctor_reports_this_machine(run_cli):
    import onnxruntime as ort

    code, out, err = run_cli("doctor")
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines()[:7])  # "name   value" rows before the backends
    assert lines["python"].startswith(platform.python_version())
    assert lines["torch"].startswith(torch.__version__)
    assert all(p in out for p in ort.get_available_providers())
    gpu = torch.cuda.is_available()
    assert (torch.cuda.get_device_name() in out) if gpu else lines["GPU"] == "none"


def test_doctor_names_what_the_tensorrt_backend_lacks(run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    report = diagnose()
    assert report["tensorrt"] is None
    assert report["backends"]["tensorrt"].startswith("needs TensorRT")
    assert report["backends"]["onnxruntime"] == "ready"
    code, out, _ = run_cli("doctor")
    assert code == 0
    assert "TensorRT      not installed" in out and "[tensorrt]' --extra-index-url" in out
    # it offered to install Polygraphy while listing it installed; a missing GPU is not pip's to fix
    [offer] = [line for line in out.splitlines() if line.startswith("to get ")]
    assert offer.startswith("to get TensorRT and Polygraphy: " if report["polygraphy"] is None else "to get TensorRT: ")
