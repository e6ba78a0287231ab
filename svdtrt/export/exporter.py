"""Tracing one component to an ONNX graph, with its weights in one external-data file.

The exporter choice lives here and only here: ``torch.onnx.export(..., dynamo=False)``
(TorchScript tracing). docs/architecture.md ("Exporting") records the probes: on torch 2.13 / diffusers 0.42 it keeps
batch, frames and latent height/width dynamic and matches PyTorch to about 1e-6 on ONNX
Runtime, while the dynamo exporter specialised h and w. The choice is written into every
manifest (:data:`EXPORTER`).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Mapping

import onnx
import torch

from ..errors import ExportError, first_line
from ..graphs.files import check_graph_file, save_graph
from ..graphs.slim import slim_graph
from ..specs import DEFAULT_OPSET, ComponentSpec

log = logging.getLogger(__name__)

#: Recorded in the manifest of every bundle.
EXPORTER = {"name": "torch.onnx.export", "dynamo": False}


def export_graph(module: torch.nn.Module, spec: ComponentSpec, inputs: Mapping[str, torch.Tensor],
                 path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``module`` at ``inputs`` into ``path``, weights in ``path`` + ``.data``.

    Inputs and outputs get the spec's names; the spec's dynamic symbols become named
    dynamic axes. The traced graph is cleaned by onnxslim (:func:`slim_graph`) and its
    weights are streamed into one data file (:func:`save_graph`), so that no step holds a
    second copy of a graph over 2 GB; onnx's checker then reads it by path.

    Raises:
        ExportError: tracing, cleaning, saving or checking failed (ENOSPC included).
    """
    dynamic_axes = {t.name: t.dynamic_axes() for t in (*spec.inputs, *spec.outputs)}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".trace-") as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                # TorchScript tracing warns about every Python-level shape branch it records;
                # the graph's correctness is checked by validation, not by these warnings.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module, tuple(inputs[n] for n in spec.input_names), str(raw),
                    input_names=spec.input_names, output_names=spec.output_names,
                    dynamic_axes=dynamic_axes, opset_version=opset,
                    do_constant_folding=True, dynamo=EXPORTER["dynamo"],
                )
        except Exception as e:  # the exporter raises many unrelated types; keep the cause chained
            raise ExportError(f"{spec.name}: torch.onnx.export failed: {first_line(e)}") from e
        # Weightless load: torch writes graphs over 2 GB as one external file per tensor.
        model = slim_graph(onnx.load(str(raw), load_external_data=False), Path(tmp))
        save_graph(model, Path(tmp), path)
    check_graph_file(path)
    log.info("exported %s to %s", spec.name, path)
