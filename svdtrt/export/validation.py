"""Validating an exported graph against its PyTorch module on ONNX Runtime (CPU; a ``validate``
session, :mod:`svdtrt.graphs.sessions`)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import AccuracyError, ExportError
from ..graphs.sessions import open_session
from ..media.metrics import psnr, tensor_metrics
from ..specs import ComponentSpec


def reference_outputs(module: torch.nn.Module, spec: ComponentSpec,
                      inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """``module``'s outputs on ``inputs``, in spec order (the reference every graph is held to)."""
    with torch.no_grad():
        expected = module(*(inputs[n] for n in spec.input_names))
    return list(expected) if isinstance(expected, (tuple, list)) else [expected]


def validate_graph(path: Path, spec: ComponentSpec, module: torch.nn.Module | None,
                   inputs: Mapping[str, torch.Tensor], max_rel_error: float | None = None,
                   min_cosine: float | None = None, min_psnr_db: float | None = None,
                   expected: list[torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
    """Run the graph at ``path`` and ``module`` on ``inputs`` and compare every output.

    The relative error is ``max|onnx - torch| / max(1, max|torch|)``, so that a tolerance
    means the same for outputs of any magnitude; PSNR (dB) is taken over the reference's
    peak-to-peak range. Tolerances default to the spec's fp32 ones; ``max_rel_error=inf``
    and ``min_psnr_db=None`` switch a check off.

    Args:
        expected: the module's outputs if already computed (:func:`reference_outputs`);
            ``module`` may then be None.
    Returns:
        ``{output_name: {"max_abs_error", "mean_abs_error", "cosine", "rel_error", "psnr_db"}}``.
    Raises:
        ExportError: an output's shape differs from PyTorch's.
        AccuracyError: an output misses ``max_rel_error``, ``min_cosine`` or ``min_psnr_db``;
            it names the component, the output and the measured value.
    """
    max_rel_error = spec.max_rel_error if max_rel_error is None else max_rel_error
    min_cosine = spec.min_cosine if min_cosine is None else min_cosine
    expected = expected if expected is not None else reference_outputs(module, spec, inputs)
    session = open_session(path, "validate")
    feeds = {n: inputs[n].detach().cpu().numpy() for n in spec.input_names}
    got = session.run(spec.output_names, feeds)
    del session
    report = {}
    for name, actual, ref in zip(spec.output_names, got, expected):
        ref = ref.detach().float().cpu().numpy()
        if actual.shape != ref.shape:
            raise ExportError(f"{spec.name}: output '{name}' has shape {list(actual.shape)} on ONNX Runtime "
                              f"but {list(ref.shape)} in PyTorch; the exported graph is wrong")
        m = tensor_metrics(actual, ref)
        m["rel_error"] = m["max_abs_error"] / max(1.0, float(np.abs(ref).max()))
        m["psnr_db"] = psnr(actual, ref, data_range=max(float(np.ptp(ref)), 1e-12))
        if not m["rel_error"] <= max_rel_error:  # written so that NaN fails too
            raise AccuracyError(spec.name, name, "relative max abs error", m["rel_error"], max_rel_error)
        if not m["cosine"] >= min_cosine:
            raise AccuracyError(spec.name, name, "cosine similarity", m["cosine"], min_cosine)
        if min_psnr_db is not None and not m["psnr_db"] >= min_psnr_db:
            raise AccuracyError(spec.name, name, "PSNR (dB)", m["psnr_db"], min_psnr_db)
        report[name] = m
    return report
