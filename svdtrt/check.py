"""The accuracy check: a bundle's graphs against PyTorch, per component and end to end.

Per component, the backend under test is fed the exact inputs the PyTorch modules received
during a real sampling run (recorded by :class:`Recorder`) and its outputs are compared with
theirs. End to end, the clip the backend produces is compared frame by frame with the clip
of diffusers' own ``StableVideoDiffusionPipeline`` for the same seed and settings.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import PIL.Image

from .accuracy import clip_metrics, psnr, tensor_metrics
from .calibration.quantize import PRECISIONS as QUANTIZED_PRECISIONS, validate_qdq_graph
from .calibration.recipe import QUANTIZED_COMPONENTS
from .runtime.backends import Recorder, TorchBackend, create_backend, reference_model
from .runtime.pipeline import SamplingSettings, SvdPipeline

#: Pass/fail limits per graph precision: the clip's worst-frame PSNR against diffusers (dB)
#: and each component output's worst cosine similarity against PyTorch.
#: fp16: the tiny preset measured clip 74.1 dB and worst component cosine 0.9999988 (svdtrt check
#: --precision fp16, docs/export.md); svd-xt's full-size fp16 graphs measured >= 0.9999 cosine per
#: component. The limits leave room for real weights and 25 steps of accumulated fp16 rounding
#: while still failing an overflow (inf/NaN) or a broken conversion; 40 dB is about 1 % RMS error.
#: Quantized precisions are held to looser limits, set from measurements with margin
#: (docs/quantization.md): int8 gave clips of 33.7-36.8 dB (tiny) and 30.9 dB (mid) and UNet cosine
#: 0.994-0.995; fp8, simulated with ORT's Distribution-calibrated scales, 23.3 dB and 0.91 (tiny).
THRESHOLDS = {
    "fp32": {"clip_min_psnr_db": 60.0, "component_min_cosine": 0.9999},
    "fp16": {"clip_min_psnr_db": 40.0, "component_min_cosine": 0.999},
    "int8": {"clip_min_psnr_db": 28.0, "component_min_cosine": 0.98},
    "fp8": {"clip_min_psnr_db": 20.0, "component_min_cosine": 0.88},
}

def _pick_unet_calls(calls: list) -> list:
    """The UNet calls replayed per check: the first, middle and last denoising step (each once)."""
    return [calls[i] for i in sorted({0, len(calls) // 2, len(calls) - 1})]


def compare_components(recorded: dict[str, list], backend, every_call: bool = False) -> dict[str, dict]:
    """Replay recorded PyTorch calls on ``backend`` and measure each output's error.

    UNet calls are sampled (first, middle and last step) unless ``every_call``.

    Returns ``{component: {output: {"max_abs_error", "mean_abs_error", "cosine"[, "psnr_db"]}}}``,
    the worst value over the replayed calls; ``psnr_db`` for decoded frames (range [-1, 1]).
    """
    report = {}
    for name, calls in recorded.items():
        fn = backend.component(name)
        worst: dict[str, dict] = {}
        for inputs, expected in (_pick_unet_calls(calls) if name == "unet" and not every_call else calls):
            actual = fn(inputs)
            for out, ref in expected.items():
                m = tensor_metrics(actual[out], ref)
                if out == "frames":
                    m["psnr_db"] = psnr(actual[out], ref, data_range=2.0)
                w = worst.setdefault(out, m)
                for k, v in m.items():
                    w[k] = min(w[k], v) if k in ("cosine", "psnr_db") else max(w[k], v)
        report[name] = worst
    return report


def check_bundle(bundle, image: PIL.Image.Image, settings: SamplingSettings, backend: str = "onnxruntime",
                 precision: str = "fp32", model=None, progress: bool = False,
                 backend_options: dict | None = None) -> dict:
    """Measure the accuracy of ``backend`` over ``bundle`` against PyTorch and diffusers.

    Args:
        bundle: the opened bundle.
        image: RGB conditioning image.
        settings: the sampling settings of both runs.
        backend, precision: what is checked.
        model: the source :class:`SvdModel`; rebuilt from the manifest's source if None.
        backend_options: further :func:`create_backend` keywords for the backend under test
            (``device``, ``cuda_graph``, ``one_engine_at_a_time``, ``threads``).
    Returns:
        A JSON-serialisable report with ``components``, ``end_to_end``, ``thresholds``,
        ``failures`` (a list of strings) and ``passed``.

    For a quantized precision (:data:`QUANTIZED_PRECISIONS`) on the ``onnxruntime`` backend, the quantized graphs are first
    checked to be symmetric Q/DQ graphs, and the clip is also compared with the clip of the
    bundle's fp32 graphs (``end_to_end["vs_fp32_graphs"]``); every reference is fp32.

    Raises:
        BundleError: the source model's configs differ from those the bundle was exported from.
        BackendUnavailableError: ``backend`` needs a package or GPU this machine lacks (raised
            before any sampling).
        QuantizationError: a quantized graph has no Q/DQ node or a non-zero zero point.
    """
    quantized = precision in QUANTIZED_PRECISIONS and backend == "onnxruntime"
    qdq = {name: validate_qdq_graph(bundle.graph_path(name, precision))
           for name in QUANTIZED_COMPONENTS} if quantized else None
    model = reference_model(bundle, model)
    start = time.perf_counter()
    options = backend_options or {}
    tested = create_backend(backend, bundle, precision, model=model, **options)  # first: a missing backend fails fast
    reference = model.pipeline()(image, output_type="np", **settings.pipeline_kwargs()).frames[0]
    recorder = Recorder(TorchBackend(model))
    torch_clip = SvdPipeline(recorder, bundle)(image, settings)
    clip = SvdPipeline(tested, bundle)(image, settings, progress=progress)
    components = compare_components(recorder.calls, tested)
    end_to_end = {"reference": "fp32"}
    if quantized:
        fp32_clip = SvdPipeline(create_backend(backend, bundle, "fp32", **options), bundle)(image, settings)
        end_to_end["vs_fp32_graphs"] = clip_metrics(clip.frames, fp32_clip.frames)

    limits = THRESHOLDS.get(precision, THRESHOLDS["fp32"])
    vs_diffusers = clip_metrics(clip.frames, reference)
    failures = []
    if vs_diffusers["min_psnr_db"] < limits["clip_min_psnr_db"]:
        failures.append(f"clip PSNR {vs_diffusers['min_psnr_db']:.1f} dB < {limits['clip_min_psnr_db']} dB")
    for name, outputs in components.items():
        for out, m in outputs.items():
            if not m["cosine"] >= limits["component_min_cosine"]:
                failures.append(f"{name}.{out} cosine {m['cosine']:.6f} < {limits['component_min_cosine']}")
    return {
        "bundle": str(bundle.path), "backend": backend, "precision": precision,
        "settings": asdict(settings),
        "components": components,
        "end_to_end": {**end_to_end, "vs_diffusers": vs_diffusers,
                       "torch_loop_vs_diffusers": clip_metrics(torch_clip.frames, reference),
                       "identical_to_diffusers": bool(np.array_equal(clip.frames, reference))},
        "timings": clip.timings,
        "check_seconds": time.perf_counter() - start,
        **({"qdq": qdq} if qdq else {}),
        "thresholds": limits, "failures": failures, "passed": not failures,
    }
