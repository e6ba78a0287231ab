"""The accuracy check: a bundle's graphs against PyTorch, per component and end to end.

Per component, the backend under test is fed the exact inputs the PyTorch modules received
during a real sampling run (recorded by :class:`Recorder`) and its outputs are compared with
theirs. End to end, the clip the backend produces is compared frame by frame with the clip
of diffusers' own ``StableVideoDiffusionPipeline`` for the same seed and settings.
"""

from __future__ import annotations

import time

import numpy as np
import PIL.Image

from .accuracy import clip_metrics, psnr, tensor_metrics
from .errors import BundleError
from .runtime.backends import Recorder, TorchBackend, create_backend, source_reference
from .runtime.pipeline import SamplingSettings, SvdPipeline

#: Pass/fail limits per graph precision: the clip's worst-frame PSNR against diffusers (dB)
#: and each component output's worst cosine similarity against PyTorch.
THRESHOLDS = {
    "fp32": {"clip_min_psnr_db": 60.0, "component_min_cosine": 0.9999},
}

#: UNet calls replayed per check: the first, middle and last denoising step.
_UNET_STEPS = ("first", "middle", "last")


def _pick_unet_calls(calls: list) -> list:
    return [calls[0], calls[len(calls) // 2], calls[-1]]


def compare_components(recorded: dict[str, list], backend) -> dict[str, dict]:
    """Replay recorded PyTorch calls on ``backend`` and measure each output's error.

    Returns ``{component: {output: {"max_abs_error", "mean_abs_error", "cosine"[, "psnr_db"]}}}``,
    the worst value over the replayed calls; ``psnr_db`` for decoded frames (range [-1, 1]).
    """
    report = {}
    for name, calls in recorded.items():
        fn = backend.component(name)
        worst: dict[str, dict] = {}
        for inputs, expected in (_pick_unet_calls(calls) if name == "unet" else calls):
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


def source_model(bundle, model=None):
    """The PyTorch model ``bundle`` was exported from: ``model`` if given, else rebuilt from the
    manifest's source (a preset, directory or hub id).

    Raises:
        BundleError: the model's configs differ from those the bundle was exported from.
    """
    from .models import load_model

    model = model or load_model(source_reference(bundle))
    if model.config_hashes() != bundle.manifest["config_hashes"]:
        raise BundleError(f"the model given is not the one bundle '{bundle.path}' was exported from "
                          "(config hashes differ); pass the source model with --model")
    return model


def check_bundle(bundle, image: PIL.Image.Image, settings: SamplingSettings, backend: str = "onnxruntime",
                 precision: str = "fp32", model=None, progress: bool = False) -> dict:
    """Measure the accuracy of ``backend`` over ``bundle`` against PyTorch and diffusers.

    Args:
        bundle: the opened bundle.
        image: RGB conditioning image.
        settings: the sampling settings of both runs.
        backend, precision: what is checked.
        model: the source :class:`SvdModel`; rebuilt from the manifest's source if None.
    Returns:
        A JSON-serialisable report with ``components``, ``end_to_end``, ``thresholds``,
        ``failures`` (a list of strings) and ``passed``.
    Raises:
        BundleError: the source model's configs differ from those the bundle was exported from.
    """
    model = source_model(bundle, model)
    start = time.perf_counter()
    reference = model.pipeline()(image, output_type="np", **settings.pipeline_kwargs()).frames[0]
    recorder = Recorder(TorchBackend(model))
    torch_clip = SvdPipeline(recorder, bundle)(image, settings)
    tested = create_backend(backend, bundle, precision, model=model)
    clip = SvdPipeline(tested, bundle)(image, settings, progress=progress)
    components = compare_components(recorder.calls, tested)

    limits = THRESHOLDS.get(precision, THRESHOLDS["fp32"])
    end_to_end = clip_metrics(clip.frames, reference)
    failures = []
    if end_to_end["min_psnr_db"] < limits["clip_min_psnr_db"]:
        failures.append(f"clip PSNR {end_to_end['min_psnr_db']:.1f} dB < {limits['clip_min_psnr_db']} dB")
    for name, outputs in components.items():
        for out, m in outputs.items():
            if not m["cosine"] >= limits["component_min_cosine"]:
                failures.append(f"{name}.{out} cosine {m['cosine']:.6f} < {limits['component_min_cosine']}")
    return {
        "bundle": str(bundle.path), "backend": backend, "precision": precision,
        "settings": {k: v for k, v in vars(settings).items()},
        "components": components,
        "end_to_end": {"vs_diffusers": end_to_end,
                       "torch_loop_vs_diffusers": clip_metrics(torch_clip.frames, reference),
                       "identical_to_diffusers": bool(np.array_equal(clip.frames, reference))},
        "timings": clip.timings,
        "check_seconds": time.perf_counter() - start,
        "thresholds": limits, "failures": failures, "passed": not failures,
    }
