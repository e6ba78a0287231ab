"""Export: an SVD model to a bundle of validated ONNX graphs (see :func:`export_bundle`)."""

from __future__ import annotations

import errno
import gc
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import onnx

from .. import __version__
from ..bundle import FORMAT_VERSION, MANIFEST, Bundle, graph_filename, write_json_atomic, writing
from ..components import example_inputs, torch_modules
from ..errors import BundleError, ExportError, InputError
from ..gpu import package_version
from ..specs import COMPONENTS, Range, check_ranges, component, profile_shapes, validation_shape
from .deployability import check_deployable
from .exporter import DEFAULT_OPSET, EXPORTER, export_graph
from .external_data import data_filename, graph_bytes
from .fp16 import convert_to_fp16
from .validation import reference_outputs, validate_graph

log = logging.getLogger(__name__)

_TOOLS = ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "onnxslim")
#: Graph precisions ``export`` writes; fp16 is converted from the fp32 graph of the same run.
PRECISIONS = ("fp32", "fp16")


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a bundle, plus Python's."""
    return {"python": platform.python_version(), "svdtrt": __version__,
            **{name: package_version(name) for name in _TOOLS}}


def export_bundle(model, out: str | Path, frames: Range | None = None, height: Range | None = None,
                  width: Range | None = None, opset: int = DEFAULT_OPSET, force: bool = False,
                  progress: bool = True, components: list[str] | None = None,
                  precisions: tuple[str, ...] = ("fp32",), release_weights: bool = False) -> Bundle:
    """Export components of ``model`` to a bundle at ``out``, validating and checking each graph.

    Each component is traced to fp32 (cleaned by onnxslim, weights in one external-data file),
    validated against PyTorch on ONNX Runtime, and checked for TensorRT deployability; with
    ``"fp16"`` in ``precisions`` its fp32 graph is converted to fp16 and validated against the
    fp32 PyTorch module with the spec's fp16 tolerances.

    Args:
        model: an :class:`svdtrt.models.SvdModel`.
        out: bundle directory to create, or an existing bundle to add ``components`` to.
        frames, height, width: (min, opt, max) sizes; default the model's own (static). They
            become each input's min/opt/max shape in the manifest. Graphs are traced and validated
            at :func:`svdtrt.specs.validation_shape`; the spec's axes stay dynamic in the graph
            (the manifest lists any the exporter fixed under ``fixed_axes``).
        opset: ONNX opset.
        force: replace an existing ``out`` (not needed to add ``components`` to a bundle).
        components: names to export (default all four). If ``out`` is a bundle of the same model
            and shapes, the others are kept as they are and only these are replaced.
        precisions: ``("fp32",)`` or ``("fp32", "fp16")``.
        release_weights: free each PyTorch module (move it to the meta device) as soon as the last
            component it serves is traced and its reference outputs are computed, so that peak
            host memory is PyTorch's weights plus one copy of one component's, not two (the model
            is unusable afterwards; the CLI sets this).
    Returns:
        The opened bundle.
    Raises:
        InputError: ``out`` exists without ``force`` (and is not a bundle to add components to),
            an unknown component or precision, a size range the model cannot take, or components
            added to a bundle with other shape ranges than its own.
        BundleError: ``out`` is a bundle of another model.
        ExportError, AccuracyError: a component failed to export, validate or pass the
            deployability check, or the disk filled; ``out`` is left as it was.
    """
    from tqdm import tqdm

    names = list(COMPONENTS) if components is None else [component(c).name for c in dict.fromkeys(components)]
    unknown = set(precisions) - set(PRECISIONS)
    if unknown or "fp32" not in precisions:
        raise InputError(f"precisions must include fp32 and be among {', '.join(PRECISIONS)}, got {', '.join(precisions)}")
    out = Path(out)
    base = _existing_bundle(out, model, components, force)
    if base is not None:
        shapes = base.manifest["shapes"]
        frames, height, width = (_same_range(k, shapes[k], r) for k, r in
                                 (("frames", frames), ("height", height), ("width", width)))
    f0, h0, w0 = model.default_shape
    frames, height, width = frames or (f0,) * 3, height or (h0,) * 3, width or (w0,) * 3
    check_ranges(model.dims, frames, height, width)
    vf, vh, vw = validation_shape(model.dims, frames, height, width)
    modules = torch_modules(model)
    # The PyTorch module behind each component (the VAE serves two), and which exported
    # component is the last to need it: that one may release it.
    owners = {"image_encoder": model.image_encoder, "vae_encoder": model.vae, "unet": model.unet,
              "vae_decoder": model.vae}
    last_user = {id(owners[n]): n for n in names}
    manifest = base.manifest if base is not None else {
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
    with writing(out, force=True) as tmp:
        try:
            if base is not None:
                _link_bundle(base.path, tmp)
            for name in tqdm(names, desc="export", unit="graph", disable=not progress):
                _remove_graphs(tmp, manifest["components"].get(name, {}))
                release = owners[name] if release_weights and last_user[id(owners[name])] == name else None
                manifest["components"][name] = _export_component(
                    name, modules[name], model.dims, tmp, opset, precisions,
                    (frames, height, width), (vf, vh, vw), release)
                gc.collect()
            if base is None:
                for sub, filename, key in (("scheduler", "scheduler_config.json", "scheduler"),
                                           ("feature_extractor", "preprocessor_config.json", "feature_extractor")):
                    (tmp / sub).mkdir()
                    write_json_atomic(tmp / sub / filename, manifest["configs"][key])
            manifest["components"] = {k: manifest["components"][k] for k in COMPONENTS if k in manifest["components"]}
            write_json_atomic(tmp / MANIFEST, manifest)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise ExportError(f"the disk filled up while exporting to '{out}'; free space and export "
                                  "again (the existing bundle, if any, is unchanged)") from None
            raise
    return Bundle.open(out)


def _export_component(name, module, dims, tmp: Path, opset: int, precisions, ranges, vshape,
                      release=None) -> dict:
    spec = COMPONENTS[name]
    sizes = dims.sizes(spec.batch[1], *vshape)
    inputs = example_inputs(spec, sizes)
    expected = reference_outputs(module, spec, inputs)
    path = tmp / graph_filename(name, "fp32")
    start = time.perf_counter()
    export_graph(module, spec, inputs, path, opset)
    seconds = time.perf_counter() - start
    if release is not None:  # validation needs only ``expected``; free the weights before ORT loads its copy
        release.to("meta")
        gc.collect()
    metrics = validate_graph(path, spec, None, inputs, expected=expected)
    log.info("%s: exported in %.1f s, validated: %s", name, seconds, metrics)
    graph_axes = _graph_axes(path)
    entry = {
        "inputs": [{"name": t.name, "dims": list(t.dims), "dtype": t.dtype} for t in spec.inputs],
        "outputs": [{"name": t.name, "dims": list(t.dims), "dtype": t.dtype} for t in spec.outputs],
        "profile": profile_shapes(spec, dims, *ranges),
        "graph_axes": graph_axes,
        "fixed_axes": _fixed_axes(spec, graph_axes),
        "graphs": {"fp32": {
            "file": path.name, "data": data_filename(path), "bytes": graph_bytes(path),
            "export_seconds": round(seconds, 3),
            "validation": {"shape": sizes, "outputs": metrics},
            "deployability": check_deployable(path),
        }},
    }
    if "fp16" in precisions:
        half = tmp / graph_filename(name, "fp16")
        start = time.perf_counter()
        info = convert_to_fp16(path, half, spec.fp16_fp32_ops)
        seconds = time.perf_counter() - start
        tol = spec.fp16
        metrics = validate_graph(half, spec, None, inputs, max_rel_error=float("inf"), min_cosine=tol.min_cosine,
                                 min_psnr_db=tol.min_psnr_db, expected=expected)
        log.info("%s: fp16 converted in %.1f s, validated: %s", name, seconds, metrics)
        entry["graphs"]["fp16"] = {
            "file": half.name, "data": data_filename(half), "bytes": graph_bytes(half),
            "convert_seconds": round(seconds, 3), **info,
            "validation": {"shape": sizes, "reference": "fp32 PyTorch module",
                           "tolerances": {"min_cosine": tol.min_cosine, "min_psnr_db": tol.min_psnr_db},
                           "outputs": metrics},
            "deployability": check_deployable(half),
        }
    return entry


def _graph_axes(path: Path) -> dict[str, list]:
    """Each graph input's and output's dims as the graph declares them (a name = dynamic)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*graph.input, *graph.output)}


def _fixed_axes(spec, graph_axes: dict[str, list]) -> list[str]:
    """Axes the spec wants dynamic that the graph fixed, as ``"input[axis]=size (symbol)"``."""
    fixed = []
    for t in (*spec.inputs, *spec.outputs):
        for axis, symbol in t.dynamic_axes().items():
            size = graph_axes.get(t.name, [])[axis:axis + 1]
            if size and isinstance(size[0], int) and size[0] > 0:
                fixed.append(f"{t.name}[{axis}]={size[0]} ({symbol})")
    return fixed


def _existing_bundle(out: Path, model, components, force: bool) -> Bundle | None:
    """The bundle at ``out`` to add ``components`` to, or None for a fresh bundle."""
    if components is None or force or not out.exists():
        if out.exists() and not force:
            raise InputError(f"'{out}' already exists; choose another path, pass --force to replace it, "
                             "or --components to re-export some components into it")
        return None
    base = Bundle.open(out)
    if base.manifest["config_hashes"] != model.config_hashes():
        raise BundleError(f"bundle '{out}' was exported from another model (config hashes differ); "
                          "export to a new directory or pass --force to replace it")
    return base


def _same_range(name: str, recorded: dict, given: Range | None) -> Range:
    have = (recorded["min"], recorded["opt"], recorded["max"])
    if given is not None and tuple(given) != have:
        raise InputError(f"the bundle was exported with {name} {':'.join(map(str, have))}; components added to it "
                         f"must use the same range (got {':'.join(map(str, given))}), or export a new bundle")
    return have


def _link_bundle(src: Path, dst: Path) -> None:
    """Fill ``dst`` with ``src``'s files as hard links (copies across file systems): cheap, and the
    new bundle's rewrites replace links without touching ``src``'s files."""
    for item in src.rglob("*"):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)


def _remove_graphs(bundle_dir: Path, entry: dict) -> None:
    for graph in entry.get("graphs", {}).values():
        for key in ("file", "data"):
            if graph.get(key):
                (bundle_dir / graph[key]).unlink(missing_ok=True)
