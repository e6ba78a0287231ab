"""The accuracy cost of a quantized graph, on the calibration set's held-out samples.

Each held-out call (the inputs recorded while sampling the held-out image; for ``unet_shallow``
with the deep feature derived from them, :mod:`svdtrt.calibration.derived`) runs through the
fp32 PyTorch module and through the quantized graph on ONNX Runtime's CPU provider, and
:func:`svdtrt.check.compare.compare_components` measures every output (cosine similarity, max and
mean abs error; PSNR for decoded frames), worst over the calls.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..graphs.sessions import open_session
from ..media.metrics import compare_components
from ..precisions import precision as lookup_precision
from ..progress import status, ticking
from ..runtime.backends.pytorch import TorchBackend
from ..specs import COMPONENTS

log = logging.getLogger(__name__)


def held_out_accuracy(graph: Path, component: str, precision: str, samples: Iterable[dict[str, np.ndarray]],
                      count: int, model, dims=None, progress: bool | str = False) -> dict:
    """Metrics of the quantized ``graph`` of ``component`` against the fp32 PyTorch module.

    Args:
        graph: the quantized graph (it need not be registered in a manifest yet).
        component: component name, e.g. ``"unet"``.
        precision: ``"int8"`` or ``"fp8"`` (decides how ONNX Runtime runs it, see the registry's
            ``measured_by``).
        samples: the held-out calls, one ``{input_name: float32 array}`` (the component's inputs)
            at a time (:func:`svdtrt.calibration.derived.component_samples` of the held-out split).
        count: how many ``samples`` there are (for the progress bar).
        model: the source :class:`SvdModel` (fp32).
        dims: the bundle's :class:`~svdtrt.specs.ModelDims` (``bundle.dims``), whose cache depth and
            layer ``unet_full`` / ``unet_shallow`` are built at; default the model's.
        progress: a bar over the held-out samples (a string: its label).
    Returns:
        ``{"samples": n, "measured_by": ..., "outputs": {output: {"max_abs_error", "mean_abs_error",
        "cosine"[, "psnr_db"]}}}``.
    Raises:
        QuantizationError: no held-out samples, or a corrupt or mismatched shard (from ``samples``).
    """
    from tqdm import tqdm

    reference = TorchBackend(model, dims=dims).component(component)
    label = progress if isinstance(progress, str) else "held-out"
    recorded = []
    bar = tqdm(samples, total=count, desc=f"{label} (PyTorch)", unit="call", disable=not progress)
    with bar, ticking(bar):  # one UNet call takes seconds on a CPU: the bar's clock runs through it
        for sample in bar:
            inputs = {k: torch.from_numpy(v) for k, v in sample.items()}
            recorded.append((inputs, reference(inputs)))
    # The graph is not in a bundle yet: run it with the options the onnxruntime backend uses. Its
    # session takes seconds to make (ONNX Runtime optimises the Q/DQ graph): a status line says so.
    with status(f"{label}: loading the graph into ONNX Runtime", enabled=bool(progress), logger=log):
        session = open_session(graph, "run", precision=precision)
    outputs = COMPONENTS[component].output_names

    class _Graph:  # the one component compare_components asks for
        def component(self, name):
            return lambda inputs: {n: torch.from_numpy(np.asarray(r, dtype=np.float32)) for n, r in zip(
                outputs, session.run(outputs, {k: v.numpy() for k, v in inputs.items()}))}

    metrics = compare_components({component: recorded}, _Graph(), every_call=True,
                                 progress=f"{label} (ONNX Runtime)" if progress else False)
    return {"samples": len(recorded), "measured_by": lookup_precision(precision).measured_by,
            "outputs": metrics[component]}
