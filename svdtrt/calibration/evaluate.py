"""The accuracy cost of a quantized graph, on the calibration set's held-out samples.

Each held-out call (the inputs recorded while sampling the held-out image) runs through the
fp32 PyTorch module and through the quantized graph on ONNX Runtime's CPU provider, and
:func:`svdtrt.check.compare_components` measures every output (cosine similarity, max and
mean abs error; PSNR for decoded frames), worst over the calls.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..bundle import Bundle
from ..runtime.backends import OnnxRuntimeBackend, TorchBackend

#: How each precision's numbers are produced on this machine (reported with them).
MEASURED_BY = {
    "int8": "onnxruntime CPU running the int8 Q/DQ graph (int8 kernels where it fuses Q/DQ, else dequantize + fp32)",
    "fp8": "simulated: onnxruntime CPU running the fp8 Q/DQ nodes unfused, other ops in fp32",
}


def held_out_accuracy(graph: Path, component: str, precision: str, calibration, model) -> dict:
    """Metrics of the quantized ``graph`` of ``component`` against the fp32 PyTorch module.

    Args:
        graph: the quantized graph (it need not be registered in a manifest yet).
        component: component name, e.g. ``"unet"``.
        precision: ``"int8"`` or ``"fp8"`` (decides how ONNX Runtime runs it, see :data:`MEASURED_BY`).
        calibration: the :class:`~svdtrt.calibration.shards.CalibrationSet` whose held-out split is used.
        model: the source :class:`SvdModel` (fp32).
    Returns:
        ``{"samples": n, "measured_by": ..., "outputs": {output: {"max_abs_error", "mean_abs_error",
        "cosine"[, "psnr_db"]}}}``.
    Raises:
        QuantizationError: no held-out samples, or a corrupt or mismatched shard.
    """
    from ..check import compare_components

    # A bundle view holding only this graph, so the runtime's own backend runs it.
    staged = Bundle(graph.parent, {"components": {component: {"graphs": {precision: {"file": graph.name}}}}})
    reference = TorchBackend(model).component(component)
    recorded = []
    for sample in calibration.samples(component, "held_out"):
        inputs = {k: torch.from_numpy(v) for k, v in sample.items()}
        recorded.append((inputs, reference(inputs)))
    metrics = compare_components({component: recorded}, OnnxRuntimeBackend(staged, precision), every_call=True)
    return {"samples": len(recorded), "measured_by": MEASURED_BY[precision], "outputs": metrics[component]}
