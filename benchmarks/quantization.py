"""Calibration time, int8 accuracy and int8 vs fp32 UNet latency on ONNX Runtime's CPU provider.

    PYTHONPATH=$PWD python benchmarks/quantization.py --preset tiny --out /tmp/bench-tiny
    PYTHONPATH=$PWD python benchmarks/quantization.py --preset mid --steps 8 --out /tmp/bench-mid

Exports the preset (unless --bundle is given), records a calibration set, quantizes to int8,
then measures: the held-out component accuracy the quantizer recorded, the int8 clip against
the fp32-graph clip and against diffusers (same seed, per-frame PSNR/SSIM), and the latency of
one UNet call (the CFG batch of 2) for the fp32 and int8 graphs (and int8 with int32 biases), alternating call by call in one
process so that both see the same machine load. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path


def _unet_latency(graphs: dict[str, Path], sample: dict, calls: int, threads: int) -> dict[str, dict]:
    import onnxruntime as ort

    sessions = {}
    for label, path in graphs.items():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        sessions[label] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    times = {p: [] for p in sessions}
    for p, s in sessions.items():  # warm-up
        s.run(None, sample)
    for _ in range(calls):
        for p, s in sessions.items():
            start = time.perf_counter()
            s.run(None, sample)
            times[p].append(time.perf_counter() - start)
    return {p: {"median_s": statistics.median(t), "min_s": min(t), "calls": len(t)} for p, t in times.items()}


def main(argv=None) -> int:
    import onnxruntime as ort
    import torch

    from svdtrt.bundle.store import Bundle
    from svdtrt.calibration.capture import calibrate_bundle, calibration_images
    from svdtrt.calibration.quantize import quantize_bundle
    from svdtrt.calibration.shards import CalibrationSet
    from svdtrt.export.bundle_export import export_bundle
    from svdtrt.graphs.qdq import DEFAULT_EXCLUDE, quantize_graph
    from svdtrt.media.images import sample_image
    from svdtrt.media.metrics import clip_metrics, cosine_similarity
    from svdtrt.models.loading import load_model
    from svdtrt.precisions import precision
    from svdtrt.runtime.backends import OnnxRuntimeBackend, TorchBackend, reference_model
    from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", type=Path, required=True, help="working directory (bundle, results.json)")
    p.add_argument("--bundle", type=Path, help="use this exported bundle instead of exporting the preset")
    p.add_argument("--count", type=int, default=5, help="calibration images (default 5, the last held out)")
    p.add_argument("--steps", type=int, default=8, help="denoising steps for calibration and the clips")
    p.add_argument("--calls", type=int, default=10, help="timed UNet calls per precision")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = p.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    results = {"preset": args.preset, "steps": args.steps, "count": args.count, "threads": args.threads}
    if args.bundle:
        # Work on a copy in --out: calibration and quantization below replace the bundle's
        # 'default' calibration set and int8 graphs, which are the user's own.
        shutil.rmtree(args.out / "bundle", ignore_errors=True)
        shutil.copytree(Bundle.open(args.bundle).path, args.out / "bundle")
        bundle = Bundle.open(args.out / "bundle")
        model = reference_model(bundle)
        results["preset"] = bundle.manifest["source"]["name"]
    else:
        model = load_model(args.preset)
        start = time.perf_counter()
        bundle = export_bundle(model, args.out / "bundle", force=True)
        results["export_s"] = time.perf_counter() - start

    start = time.perf_counter()
    calibrate_bundle(bundle, calibration_images(count=args.count), steps=args.steps, force=True, model=model)
    results["calibration_s"] = time.perf_counter() - start
    start = time.perf_counter()
    entries = quantize_bundle(bundle, "int8", force=True, model=model)
    results["quantize_s"] = time.perf_counter() - start
    results["held_out"] = {n: e["held_out_accuracy"] for n, e in entries.items()}

    frames, height, width = bundle.default_shape
    settings = SamplingSettings(frames=frames, height=height, width=width, steps=args.steps, seed=42)
    image = sample_image("astronaut")
    reference = model.pipeline()(image, output_type="np", **settings.pipeline_kwargs()).frames[0]
    clips = {p: SvdPipeline(OnnxRuntimeBackend(bundle, p), bundle)(image, settings) for p in ("fp32", "int8")}
    results["clip"] = {"int8_vs_fp32_graphs": clip_metrics(clips["int8"].frames, clips["fp32"].frames),
                       "int8_vs_diffusers": clip_metrics(clips["int8"].frames, reference),
                       "fp32_vs_diffusers": clip_metrics(clips["fp32"].frames, reference)}
    # The same recipe with int32 biases (--quantize-bias): what ORT's CPU provider can fuse into QLinearConv.
    calib = CalibrationSet(bundle, "default")
    biased = args.out / "unet.int8-bias.onnx"
    quantize_graph(bundle.graph_path("unet"), biased, calib.samples("unet"), precision("int8").quantizer,
                   DEFAULT_EXCLUDE, quantize_bias=True)
    sample = next(calib.samples("unet", "held_out"))
    reference = TorchBackend(model).component("unet")({k: torch.from_numpy(v) for k, v in sample.items()})
    out = ort.InferenceSession(str(biased), providers=["CPUExecutionProvider"]).run(None, sample)[0]
    results["int8_bias_unet_cosine"] = cosine_similarity(out, reference["noise_pred"])
    graphs = {"fp32": bundle.graph_path("unet", "fp32"), "int8": bundle.graph_path("unet", "int8"),
              "int8_bias": biased}
    results["unet_latency"] = _unet_latency(graphs, sample, args.calls, args.threads)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))

    lat, clip = results["unet_latency"], results["clip"]["int8_vs_fp32_graphs"]
    print(f"| preset | calibration ({args.count} images x {args.steps} steps) | quantize | "
          "UNet cosine (held out) | decoder PSNR (held out) | clip PSNR min/mean vs fp32 | clip SSIM min | "
          "UNet call fp32 | int8 | speed-up | int8 + int32 bias | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.preset} | {results['calibration_s']:.1f} s | {results['quantize_s']:.1f} s | "
          f"{results['held_out']['unet']['outputs']['noise_pred']['cosine']:.4f} | "
          f"{results['held_out']['vae_decoder']['outputs']['frames']['psnr_db']:.1f} dB | "
          f"{clip['min_psnr_db']:.1f} / {clip['mean_psnr_db']:.1f} dB | {clip['min_ssim']:.4f} | "
          f"{lat['fp32']['median_s'] * 1e3:.0f} ms | {lat['int8']['median_s'] * 1e3:.0f} ms | "
          f"{lat['fp32']['median_s'] / lat['int8']['median_s']:.2f}x | {lat['int8_bias']['median_s'] * 1e3:.0f} ms | "
          f"{lat['fp32']['median_s'] / lat['int8_bias']['median_s']:.2f}x |")
    print(f"results in {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
