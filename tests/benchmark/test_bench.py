"""svdtrt bench: the result files and their schema, skipped rows with reasons, bad input.

Timings are not asserted (they depend on the machine); accuracy and structure are.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import re

import numpy as np
import pytest
import torch

from svdtrt.benchmark import FILES, bundle_precisions, run_benchmark
from svdtrt.runtime.measure import PeakMemory, order_stats
from svdtrt.bundle.store import Bundle
from svdtrt.runtime.pipeline import SamplingSettings, StageTimer

STAGE_KEYS = {"clip", "vae_encode", "unet", "unet_per_step", "vae_decode", "total", "other"}
LOOP_KEYS = {"step", "overhead_per_step"}


@pytest.fixture(scope="module")
def bench_out(tiny_bundle, tmp_path_factory):
    """One CLI bench of the tiny bundle on the CPU (also where a GPU is present): 1 step, 1 measured
    clip, with rows that must be skipped."""
    from svdtrt.cli.main import main

    out = tmp_path_factory.mktemp("bench") / "results"
    threads = torch.get_num_threads()
    code = main(["bench", str(tiny_bundle.path), "--steps", "1", "--warmup", "0", "--repeat", "1",
                 "--backends", "torch,onnxruntime,tensorrt", "--precisions", "fp32,int8", "--threads", "1",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    assert torch.get_num_threads() == threads  # --threads holds for the benchmark only
    return out


def _rows(results):
    return {(r["backend"], r["precision"]): r for r in results["rows"]}


@pytest.mark.slow
def test_bench_writes_all_files(bench_out):
    assert sorted(p.name for p in bench_out.iterdir()) == sorted(FILES)
    for name in ("stages.png", "tradeoff.png"):
        data = (bench_out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bench_json_schema(bench_out, tiny_bundle):
    results = json.loads((bench_out / "results.json").read_text())
    assert results["schema"] == "svdtrt-bench/1"
    assert results["command"].startswith("svdtrt bench ")
    assert {"cpu", "cpus_usable", "memory_bytes", "gpus", "load_average"} <= set(results["machine"])
    assert results["versions"]["torch"] == importlib.metadata.version("torch")
    assert results["settings"]["steps"] == 1 and results["settings"]["frames"] == 4
    assert results["bundle"]["precisions"] == ["fp32"]
    assert (results["warmup"], results["repeat"], results["device"], results["threads"]) == (0, 1, "cpu", 1)

    rows = _rows(results)
    assert list(rows)[0] == ("diffusers", "fp32")  # the reference comes first
    reference = rows["diffusers", "fp32"]
    assert reference["status"] == "measured" and reference["reference"] and reference["accuracy"] is None
    assert reference["speedup_vs_reference"] == 1.0
    assert STAGE_KEYS <= set(reference["stages"])

    for key in (("torch", "fp32"), ("onnxruntime", "fp32")):
        row = rows[key]
        assert row["status"] == "measured" and not row["reference"]
        assert STAGE_KEYS | LOOP_KEYS <= set(row["stages"])
        for stats in row["stages"].values():
            assert set(stats) == {"median", "p90", "min", "max", "n"} and stats["n"] == 1
        assert row["stages"]["total"]["median"] > row["stages"]["unet"]["median"] > 0
        assert 0 <= row["overhead"]["share_of_step"] < 1
        assert row["memory"]["peak_rss_bytes"] >= row["memory"]["rss_start_bytes"] > 0
        # no CUDA: None; on a CUDA machine this CPU bench allocates nothing of torch's on the GPU
        assert not row["memory"]["peak_gpu_bytes"]
        assert len(row["accuracy"]["psnr_db"]) == 4
        assert row["accuracy"]["min_psnr_db"] >= 60 and row["accuracy"]["min_ssim"] > 0.999
        assert row["speedup_vs_reference"] > 0 and row["unet_speedup_vs_fp32"] == 1.0
    # the runtime's loop over the PyTorch modules draws the same numbers as diffusers
    assert rows["torch", "fp32"]["accuracy"]["min_psnr_db"] == 200.0


def test_bench_reports_skipped_with_reason(bench_out):
    rows = _rows(json.loads((bench_out / "results.json").read_text()))
    assert rows["tensorrt", "fp32"]["status"] == "skipped"
    # without TensorRT: what is missing; with it: no engine yet, and the command that builds it
    reason = rows["tensorrt", "fp32"]["reason"]
    assert "the tensorrt backend needs" in reason or "build it with 'svdtrt build" in reason
    assert rows["onnxruntime", "int8"]["status"] == "skipped"
    assert "no int8 graph" in rows["onnxruntime", "int8"]["reason"]
    assert rows["torch", "int8"]["status"] == "skipped"
    assert "the torch backend runs fp32, fp16, not int8" in rows["torch", "int8"]["reason"]


def test_bench_markdown_has_a_row_per_result(bench_out):
    text = (bench_out / "results.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| diffusers | fp32 | cpu |") and "reference" in line for line in table)
    assert any(line.startswith("| torch | fp32 | cpu |") for line in table)
    assert any(line.startswith("| onnxruntime | fp32 | cpu |") for line in table)
    # the skipped table gives each backend's reason once, with the precisions it skipped
    tensorrt = [line for line in table if line.startswith("| tensorrt | ")]
    assert len(tensorrt) == 1 and tensorrt[0].startswith("| tensorrt | fp32, int8 | ")
    assert text.count("needs TensorRT") == 1
    assert any(line.startswith("| onnxruntime | int8 | ") and "no int8 graph" in line for line in table)


def test_bench_progress_counts_only_the_rows_that_run(tiny_bundle, tiny_model, photo, capsys):
    settings = SamplingSettings(frames=4, height=64, width=64, steps=1)
    results = run_benchmark(tiny_bundle, photo, settings, tiny_model, ["onnxruntime", "tensorrt"], ["fp32", "int8"],
                            warmup=0, repeat=2, progress=True)
    measured = results.measured()
    assert len(measured) == 2  # the reference and onnxruntime fp32; three rows skipped
    counts = re.findall(r"bench:.*?\b(\d+)/(\d+) \[", capsys.readouterr().err)
    done, total = map(int, counts[-1])
    assert done == total == 2 * len(measured)  # 2 clips per row that ran, none for the skipped


@pytest.mark.parametrize("args, message", [
    (["--backends", "torch,openvino"], "unknown backend 'openvino'"),
    (["--precisions", "fp64"], "unknown precision 'fp64'"),
    (["--backends", ","], "no backend given"),
    (["--repeat", "0"], "--repeat >= 1"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--height", "60"], "multiples of 8"),
    (["--image", "missing.png"], "not found"),
])
def test_bench_bad_input_is_one_line_exit_2(run_cli, tiny_bundle, tmp_path, args, message):
    code, out, err = run_cli("bench", tiny_bundle.path, "--steps", "1", "--out", tmp_path / "b", *args)
    assert code == 2
    assert err.startswith("svdtrt: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "b").exists()


def test_bench_refuses_existing_output(run_cli, tiny_bundle, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    code, _, err = run_cli("bench", tiny_bundle.path, "--out", tmp_path / "b", "--force")
    assert code == 2 and "is a folder that is not a bench results folder (no results.json)" in err
    assert (tmp_path / "b" / "keep.txt").read_text() == "mine"


def test_default_precisions_come_from_the_manifest(tiny_bundle):
    from svdtrt.bundle.manifest import GraphEntry

    manifest = tiny_bundle.manifest.model_copy(deep=True)
    manifest.components["unet"].graphs["int8"] = GraphEntry(file="unet.int8.onnx", data=None, bytes=0)
    manifest.components["vae_decoder"].graphs["fp16"] = GraphEntry(file="vae_decoder.fp16.onnx", data=None, bytes=0)
    assert bundle_precisions(Bundle(tiny_bundle.path, manifest)) == ["fp32", "fp16", "int8"]


def test_order_stats_median_and_p90():
    s = order_stats([4.0, 1.0, 3.0, 2.0, 10.0])
    assert dataclasses.asdict(s) == {"median": 3.0, "p90": pytest.approx(7.6), "min": 1.0, "max": 10.0, "n": 5}


def test_peak_memory_sees_an_allocation_after_reset():
    memory = PeakMemory()
    big = np.ones(2**25)  # 256 MiB, touched, then freed before the reset
    del big
    memory.reset()
    small = np.ones(2**24)  # 128 MiB
    m = memory.read()
    del small
    assert m.peak_rss_bytes - m.rss_start_bytes >= 100 * 2**20
    if m.host_method == "VmHWM":  # the 256 MiB before the reset is not counted
        assert m.peak_rss_bytes - m.rss_start_bytes < 200 * 2**20


class _CpuBackend:
    name, device = "fake", torch.device("cpu")

    def synchronize(self):
        pass


def test_stage_timer_overhead_is_step_minus_unet():
    timer = StageTimer(_CpuBackend())
    timer.seconds.update({"step": [0.30, 0.50], "unet": [0.25, 0.45], "clip": [0.1]})
    summary = timer.summary()
    assert summary["unet_per_step"] == pytest.approx(0.35)
    assert summary["overhead_per_step"] == pytest.approx(0.05)
    assert summary["clip"] == pytest.approx(0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_on_cuda_measures_gpu_memory(tiny_bundle, tiny_model, photo):
    frames, height, width = tiny_bundle.default_shape
    settings = SamplingSettings(frames=frames, height=height, width=width, steps=2)
    results = run_benchmark(tiny_bundle, photo, settings, tiny_model, ["torch"], ["fp32"], warmup=1, repeat=1,
                            device="cuda")
    rows = _rows(results.to_json())
    assert rows["diffusers", "fp32"]["device"] == "cuda" and rows["torch", "fp32"]["device"] == "cuda"
    assert rows["torch", "fp32"]["memory"]["peak_gpu_bytes"] > 0
    assert rows["torch", "fp32"]["accuracy"]["min_psnr_db"] >= 60


def test_bench_work_rows_end_to_end(tiny_bundle, tmp_path, run_cli, caplog):
    """bench with lists of the work options: one measured row per combination beside the base row,
    its UNet FLOPs counted from the clip's own calls, its clip compared with the base clip; -v logs
    every clip's stage times under its label, and the loading and the results written."""
    out = tmp_path / "work"
    code, _, err = run_cli("bench", tiny_bundle.path, "--steps", "3", "--warmup", "0", "--repeat", "1",
                           "--backends", "onnxruntime", "--precisions", "fp32", "--device", "cpu",
                           "--cache-interval", "1,2", "--guidance-steps", "all,1", "--out", out, "-v")
    assert code == 0, err
    info = [r.getMessage() for r in caplog.records if r.name.startswith("svdtrt") and r.levelno == logging.INFO]
    assert any(m.startswith("svdtrt bench: loading PyTorch, diffusers and ONNX Runtime took ") for m in info)
    for clip in ("diffusers reference clip 1/1", "onnxruntime fp32 clip 1/1",
                 "onnxruntime fp32 euler, cache interval 2, guidance steps 1 clip 1/1"):
        assert any(m.startswith(f"bench: {clip}: ") and " total " in m for m in info), clip
    assert f"published {out}" in info
    results = json.loads((out / "results.json").read_text())
    base = _rows(results)["onnxruntime", "fp32"]
    assert base["work"]["cache_interval"] == 1 and base["work"]["unet_calls"] == 3
    work = {(r["work"]["cache_interval"], r["work"]["guidance_steps"]): r for r in results["work_rows"]}
    assert set(work) == {(2, None), (1, 1), (2, 1)}  # every combination but the base
    for (interval, guidance), row in work.items():
        assert row["status"] == "measured", row.get("reason")
        assert row["flops_saving_vs_full_compute"] == base["work"]["unet_flops"] / row["work"]["unet_flops"] > 1
        assert row["accuracy"]["min_psnr_db"] < 100  # the clip changed, and was compared with the base clip
    # 3 steps, cache interval 2, guidance on the first step only: full b2, shallow b1, full b1
    assert {k: v["calls"] for k, v in work[2, 1]["work"]["graphs"].items()} == {
        "unet_full batch 2": 1, "unet_shallow batch 1": 1, "unet_full batch 1": 1}
    assert (out / "work.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cache" in (out / "results.md").read_text().lower()
