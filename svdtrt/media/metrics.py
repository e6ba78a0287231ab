"""Accuracy metrics shared by export validation, ``svdtrt check``, quantization and benchmarks.

All functions take numpy arrays or torch tensors of equal shape and compute in float64.
"""

from __future__ import annotations

import math

import numpy as np

from ..specs import UNET_COMPONENTS

#: PSNR of identical inputs is infinite; it is reported as this cap so reports stay valid JSON.
PSNR_CAP_DB = 200.0


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def max_abs_error(actual, expected) -> float:
    """max |actual - expected| (same units as the tensors)."""
    return float(np.max(np.abs(_np(actual) - _np(expected))))


def mean_abs_error(actual, expected) -> float:
    """mean |actual - expected| (same units as the tensors)."""
    return float(np.mean(np.abs(_np(actual) - _np(expected))))


def cosine_similarity(actual, expected) -> float:
    """Cosine of the angle between the two tensors flattened; 1.0 when both are zero."""
    a, b = _np(actual).ravel(), _np(expected).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norm)


def psnr(actual, expected, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(range^2 / MSE), capped at :data:`PSNR_CAP_DB`;
    ``-inf`` when either input holds NaN or inf, so that such a clip fails every threshold."""
    mse = float(np.mean((_np(actual) - _np(expected)) ** 2))
    if not np.isfinite(mse):
        return float("-inf")
    if mse == 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(data_range**2 / mse))


def ssim(actual, expected, data_range: float = 1.0) -> float:
    """Structural similarity of two images [H, W, 3] (scikit-image's ``structural_similarity``,
    Wang et al. 2004, 7x7 window)."""
    from skimage.metrics import structural_similarity

    a, b = _np(actual), _np(expected)
    win = min(7, *a.shape[:2]) | 1  # odd and no larger than the image
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=-1, win_size=win))


def tensor_metrics(actual, expected) -> dict[str, float]:
    """max and mean absolute error and cosine similarity of one output."""
    return {
        "max_abs_error": max_abs_error(actual, expected),
        "mean_abs_error": mean_abs_error(actual, expected),
        "cosine": cosine_similarity(actual, expected),
    }


def clip_metrics(frames, reference) -> dict:
    """Per-frame PSNR (dB) and SSIM of a clip against a reference clip.

    Args:
        frames, reference: float arrays [F, H, W, 3] in [0, 1].
    Returns:
        ``{"psnr_db": [...], "ssim": [...], "min_psnr_db", "mean_psnr_db", "min_ssim", "mean_ssim"}``.
    """
    a, b = _np(frames), _np(reference)
    if a.shape != b.shape:
        raise ValueError(f"clip shapes differ: {a.shape} vs {b.shape}")
    p = [psnr(x, y) for x, y in zip(a, b)]
    s = [ssim(x, y) for x, y in zip(a, b)]
    return {"psnr_db": p, "ssim": s, "min_psnr_db": min(p), "mean_psnr_db": float(np.mean(p)),
            "min_ssim": min(s), "mean_ssim": float(np.mean(s))}


def _pick_unet_calls(calls: list) -> list:
    """The UNet calls replayed per check: the first, middle and last denoising step (each once)."""
    return [calls[i] for i in sorted({0, len(calls) // 2, len(calls) - 1})]


def compare_components(recorded: dict[str, list], backend, every_call: bool = False,
                       progress: bool | str = False) -> dict[str, dict]:
    """Replay recorded PyTorch calls on ``backend`` and measure each output's error.

    UNet calls (of each UNet graph) are sampled (first, middle and last) unless ``every_call``;
    components that were not called are left out. ``progress`` shows a bar over the replayed
    calls (a string: its label).

    Returns ``{component: {output: {"max_abs_error", "mean_abs_error", "cosine"[, "psnr_db"]}}}``,
    the worst value over the replayed calls; ``psnr_db`` for decoded frames (range [-1, 1]).
    """
    from tqdm import tqdm

    replayed = {name: _pick_unet_calls(calls) if calls and name in UNET_COMPONENTS and not every_call else calls
                for name, calls in recorded.items()}
    bar = tqdm(total=sum(len(c) for c in replayed.values()), desc=progress if isinstance(progress, str) else "compare",
               unit="call", disable=not progress)
    report = {}
    for name, calls in replayed.items():
        if not calls:
            continue
        fn = backend.component(name)
        worst: dict[str, dict] = {}
        bar.set_postfix_str(name)
        for inputs, expected in calls:
            actual = fn(inputs)
            bar.update()
            for out, ref in expected.items():
                m = tensor_metrics(actual[out], ref)
                if out == "frames":
                    m["psnr_db"] = psnr(actual[out], ref, data_range=2.0)
                w = worst.setdefault(out, m)
                for k, v in m.items():
                    w[k] = min(w[k], v) if k in ("cosine", "psnr_db") else max(w[k], v)
        report[name] = worst
    bar.close()
    return report
