"""Export: an SVD model to a bundle of validated ONNX graphs (see :func:`export_bundle`)."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from pathlib import Path

from .. import __version__
from ..bundle import FORMAT_VERSION, MANIFEST, Bundle, graph_filename, write_json_atomic, writing
from ..components import example_inputs, torch_modules
from ..specs import COMPONENTS, Range, profile_shapes
from .exporter import DEFAULT_OPSET, EXPORTER, export_graph
from .validation import validate_graph

log = logging.getLogger(__name__)

_TOOLS = ("torch", "diffusers", "transformers", "onnx", "onnxruntime")


def tool_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a bundle, plus Python's."""
    versions = {"python": platform.python_version(), "svdtrt": __version__}
    for name in _TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def export_bundle(model, out: str | Path, frames: Range | None = None, height: Range | None = None,
                  width: Range | None = None, opset: int = DEFAULT_OPSET, force: bool = False,
                  progress: bool = True) -> Bundle:
    """Export the four components of ``model`` to a new bundle at ``out``, validating each.

    Args:
        model: an :class:`svdtrt.models.SvdModel`.
        out: bundle directory to create.
        frames, height, width: (min, opt, max) sizes; default the model's own (static).
            Graphs are traced at the optimal shape and validated there; the axes stay dynamic.
        opset: ONNX opset.
        force: replace an existing ``out``.
    Returns:
        The opened bundle.
    Raises:
        InputError: ``out`` exists without ``force``, or a size the model cannot take.
        ExportError, AccuracyError: a component failed to export or to validate; ``out`` is
            left as it was.
    """
    from tqdm import tqdm

    f0, h0, w0 = model.default_shape
    frames, height, width = frames or (f0,) * 3, height or (h0,) * 3, width or (w0,) * 3
    for i in range(3):
        model.dims.check_size(frames[i], height[i], width[i])
    modules = torch_modules(model)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": model.source,
        "config_hashes": model.config_hashes(),
        "configs": model.configs(),
        "dims": vars(model.dims),
        "exporter": {**EXPORTER, "opset": opset},
        "tools": tool_versions(),
        "shapes": {k: dict(zip(("min", "opt", "max"), v)) for k, v in
                   (("frames", frames), ("height", height), ("width", width))},
        "components": {},
    }
    with writing(out, force) as tmp:
        for name in tqdm(COMPONENTS, desc="export", unit="graph", disable=not progress):
            spec = COMPONENTS[name]
            sizes = model.dims.sizes(spec.batch[1], frames[1], height[1], width[1])
            inputs = example_inputs(spec, sizes)
            path = tmp / graph_filename(name, "fp32")
            start = time.perf_counter()
            export_graph(modules[name], spec, inputs, path, opset)
            seconds = time.perf_counter() - start
            metrics = validate_graph(path, spec, modules[name], inputs)
            log.info("%s: exported in %.1f s, validated: %s", name, seconds, metrics)
            manifest["components"][name] = {
                "inputs": [{"name": t.name, "dims": list(t.dims), "dtype": t.dtype} for t in spec.inputs],
                "outputs": [{"name": t.name, "dims": list(t.dims), "dtype": t.dtype} for t in spec.outputs],
                "profile": profile_shapes(spec, model.dims, frames, height, width),
                "graphs": {"fp32": {
                    "file": path.name, "data": path.name + ".data",
                    "bytes": path.stat().st_size + (tmp / (path.name + ".data")).stat().st_size,
                    "export_seconds": round(seconds, 3),
                    "validation": {"shape": sizes, "outputs": metrics},
                }},
            }
        for sub, filename, key in (("scheduler", "scheduler_config.json", "scheduler"),
                                   ("feature_extractor", "preprocessor_config.json", "feature_extractor")):
            (tmp / sub).mkdir()
            write_json_atomic(tmp / sub / filename, manifest["configs"][key])
        write_json_atomic(tmp / MANIFEST, manifest)
    return Bundle.open(out)
