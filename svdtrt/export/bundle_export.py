"""Export: an SVD model to a bundle of validated ONNX graphs (see :func:`export_bundle`)."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from .. import hints
from ..bundle.manifest import CONFIG_FILES, Accuracy, ComponentEntry, GraphEntry, build
from ..bundle.store import Bundle, Staged, changing, creating, graph_filename
from ..environment import tool_versions
from ..errors import BundleError, InputError
from ..graphs.deployability import check_deployable
from ..graphs.files import data_filename, graph_bytes
from ..models.modules import example_inputs, torch_modules
from ..precisions import made_by
from ..precisions import precision as lookup_precision
from ..progress import step, ticking
from ..publishing import checkpoint
from ..specs import (
    CACHING_COMPONENTS,
    COMPONENTS,
    DEFAULT_CACHE_DEPTH,
    DEFAULT_OPSET,
    ModelDims,
    Range,
    check_ranges,
    component,
    profile_shapes,
    validation_shape,
    with_caching_graphs,
)
from .convert import fp16_graph
from .exporter import EXPORTER, export_graph
from .validation import reference_outputs, validate_graph

log = logging.getLogger(__name__)

#: Graph precisions ``export`` can write: fp32, and those converted from it in the same run.
PRECISIONS = made_by("export") + made_by("convert")


def export_bundle(model, out: str | Path, frames: Range | None = None, height: Range | None = None,
                  width: Range | None = None, opset: int = DEFAULT_OPSET, force: bool = False,
                  progress: bool = True, components: list[str] | None = None,
                  precisions: tuple[str, ...] = ("fp32",), release_weights: bool = False,
                  cache_depth: int | None = None, cache_layer: int | None = None) -> Bundle:
    """Export components of ``model`` to a bundle at ``out``, validating and checking each graph.

    Each component is traced to fp32 (cleaned by onnxslim, weights in one external-data file),
    validated against PyTorch on ONNX Runtime, and checked for TensorRT deployability; with
    ``"fp16"`` in ``precisions`` its fp32 graph is converted as ``svdtrt convert`` does
    (:func:`svdtrt.export.convert.convert_component`). The whole export is one bundle
    transaction (docs/architecture.md, "Transactions"): the bundle appears, or changes, at once.

    Args:
        model: an :class:`svdtrt.models.loading.SvdModel`.
        out: bundle folder to create, or an existing bundle to add ``components`` to.
        frames, height, width: (min, opt, max) sizes; default the model's own (static). They
            become each input's min/opt/max shape in the manifest. Graphs are traced and validated
            at :func:`svdtrt.specs.validation_shape`; the spec's axes stay dynamic in the graph
            (the manifest lists any the exporter fixed under ``fixed_axes``).
        opset: ONNX opset.
        force: replace whatever is at ``out`` (not needed to add ``components`` to a bundle).
        components: names to export (default all, the block-caching pair included). If ``out`` is
            a bundle of the same model and shapes, the others are kept as they are and only these
            are replaced (with every graph, quantized one or engine derived from them); replacing
            ``unet`` replaces the block-caching graphs too, since they read its weights file.
        precisions: ``("fp32",)`` or ``("fp32", "fp16")``.
        release_weights: free each PyTorch module (move it to the meta device) as soon as every
            component it serves is traced and has its reference outputs, before any of their
            graphs is validated, so that PyTorch's weights and ONNX Runtime's copy are never held
            together (docs/export.md, "Memory"; the model is unusable afterwards; the CLI sets this).
        cache_depth, cache_layer: where ``unet_full`` / ``unet_shallow`` split the UNet: the deep
            feature enters layer ``cache_layer`` of up block n - ``cache_depth``
            (:mod:`svdtrt.models.block_cache`); recorded in the manifest's ``dims``. None: the bundle's
            when adding components to one, else :data:`~svdtrt.specs.DEFAULT_CACHE_DEPTH` and 0.
    Returns:
        The opened bundle.
    Raises:
        InputError: ``out`` exists (or appears while exporting) without ``force`` and is not a
            bundle to add components to, an unknown component or precision, a size range the
            model cannot take, components added with other shape ranges, a read-only or full disk.
        BundleError: ``out`` is a bundle of another model.
        ExportError, AccuracyError: a component failed to export, validate or pass the
            deployability check; ``out`` is left as it was.
    """
    names = with_caching_graphs(list(COMPONENTS) if components is None
                                else [component(c).name for c in dict.fromkeys(components)])
    unet, vae, image_encoder = model.unet.config, model.vae.config, model.image_encoder.config.to_dict()
    dims = ModelDims.from_configs(unet, vae, image_encoder, DEFAULT_CACHE_DEPTH if cache_depth is None else cache_depth,
                                  cache_layer or 0)
    for p in precisions:
        if lookup_precision(p).name not in PRECISIONS:
            raise InputError(f"export writes {', '.join(PRECISIONS)} graphs, not {p}; "
                             f"'{hints.make_precision(out, lookup_precision(p).name, model.source['name'])}' "
                             f"makes {p} graphs from a bundle")
    if "fp32" not in precisions:
        raise InputError("export always writes the fp32 graphs: include fp32 in the precisions")
    out = Path(out)
    adding = components is not None and not force and out.exists()
    with (changing(out) if adding else creating(out, force)) as staged:
        if adding:
            frames, height, width = _same_ranges(staged, model, frames, height, width)
            if cache_depth is None and cache_layer is None:  # the bundle's split, unless asked for another
                old = staged.old.manifest.dims
                dims = ModelDims.from_configs(unet, vae, image_encoder, old.cache_depth, old.cache_layer)
            _same_cache_branch(staged, dims, names)
        f0, h0, w0 = model.default_shape
        frames, height, width = frames or (f0,) * 3, height or (h0,) * 3, width or (w0,) * 3
        check_ranges(dims, frames, height, width)
        if staged.manifest is None:
            staged.manifest = _new_manifest(model, dims, opset, frames, height, width)
            for key, name in CONFIG_FILES.items():
                staged.write_json(name, model.configs()[key])
        staged.manifest.dims = staged.manifest.dims.model_copy(update=vars(dims))
        _export_components(staged, model, dims, names, opset, precisions, (frames, height, width), progress,
                           release_weights)
        return staged.commit()


def _new_manifest(model, dims: ModelDims, opset: int, frames: Range, height: Range, width: Range):
    return build(
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), source=model.source, config_hashes=model.config_hashes(),
        configs=json.loads(json.dumps(model.configs(), default=str)), dims=vars(dims), exporter={**EXPORTER, "opset": opset}, tools=tool_versions(),
        shapes={k: dict(zip(("min", "opt", "max"), v)) for k, v in
                (("frames", frames), ("height", height), ("width", width))},
        files={}, components={})


def _same_ranges(staged: Staged, model, *given: Range | None) -> tuple[Range, Range, Range]:
    """The bundle's ranges, refusing other ones and another model."""
    if staged.old.manifest.config_hashes != model.config_hashes():
        raise BundleError(f"bundle '{staged.target}' was exported from another model (config hashes differ); "
                          "export to a new folder or pass --force to replace it")
    shapes = staged.old.manifest.shapes
    ranges = []
    for name, r in zip(("frames", "height", "width"), given):
        have = getattr(shapes, name).as_tuple()
        if r is not None and tuple(r) != have:
            raise InputError(f"the bundle was exported with {name} {':'.join(map(str, have))}; components added to "
                             f"it must use the same range (got {':'.join(map(str, r))}), or export a new bundle")
        ranges.append(have)
    return tuple(ranges)


def _same_cache_branch(staged: Staged, dims: ModelDims, names: list[str]) -> None:
    """Refuse a cache depth or layer other than the bundle's unless the caching graphs are re-exported."""
    old = staged.old.manifest.dims
    have, want = (old.cache_depth, old.cache_layer), (dims.cache_depth, dims.cache_layer)
    if want != have and not set(CACHING_COMPONENTS) <= set(names):
        raise InputError(f"the bundle's caching graphs have cache depth {have[0]} and layer {have[1]}; export "
                         f"{','.join(CACHING_COMPONENTS)} (or unet) with --cache-depth {want[0]} --cache-layer {want[1]}, "
                         "or leave both out")


def _export_components(staged: Staged, model, dims: ModelDims, names: list[str], opset: int, precisions, ranges,
                       progress: bool, release_weights: bool) -> None:
    """Export ``names`` module by module (docs/export.md, "Memory"): every component a PyTorch module
    serves is traced while the module is alive (the VAE serves two, the UNet three), then the module
    is released (``release_weights``) before ONNX Runtime loads any of their graphs to validate them,
    one graph at a time; so PyTorch's weights and ONNX Runtime's copy are never in memory together.
    One bar over the graphs, its postfix naming the step in hand, its clock ticking."""
    from tqdm import tqdm

    manifest = staged.manifest
    vshape = validation_shape(dims, *ranges)
    modules = torch_modules(model, dims)
    owners = {"image_encoder": model.image_encoder, "vae_encoder": model.vae, "unet": model.unet,
              "vae_decoder": model.vae, "unet_full": model.unet, "unet_shallow": model.unet}
    by_owner: dict[int, list[str]] = {}
    for name in names:
        by_owner.setdefault(id(owners[name]), []).append(name)
    with tqdm(total=len(names), desc="export", unit="graph", disable=not progress) as bar, ticking(bar):
        for group in by_owner.values():
            # Every graph of the group's components goes first, with their engines: dropping a
            # caching graph after the UNet's new trace would take the UNet's new weights file with
            # it (the caching graphs read it, and the UNet's old entry is already gone).
            for name in group:
                staged.drop_graph(name)
            traced = [_trace(name, modules[name], dims, staged.path, opset, vshape, bar) for name in group]
            if release_weights:  # validation needs only each graph's reference outputs
                owners[group[0]].to("meta")
                gc.collect()
                log.info("released the PyTorch weights of %s", ", ".join(group))
            while traced:
                graph = traced.pop(0)  # each graph's inputs and references freed once it is checked
                name = graph.name
                entry = _checked_entry(graph, dims, ranges, bar)
                if "fp16" in precisions:
                    with step(bar, f"{name}: fp16 conversion and validation", log):
                        entry.graphs["fp16"] = fp16_graph(manifest.configs, entry.graphs["fp32"], staged.path,
                                                          staged.path, name, graph.sizes, graph.inputs, graph.expected)
                owner = COMPONENTS[name].shares_weights_with
                with step(bar, f"{name}: sharing {owner}'s weights file", log) if owner else contextlib.nullcontext():
                    for precision, g in entry.graphs.items():
                        entry.graphs[precision] = staged.share_weights(name, precision, g)
                manifest.components[name] = entry
                del graph
                gc.collect()
                checkpoint("export-component")
                bar.update()
    manifest.components = {k: manifest.components[k] for k in COMPONENTS if k in manifest.components}


@dataclass
class _Traced:
    """A component's traced fp32 graph at ``path``, with what validating it needs: the validation
    sizes, inputs and PyTorch's outputs on them (small: :func:`~svdtrt.specs.validation_shape`)."""

    name: str
    path: Path
    seconds: float
    sizes: dict[str, int]
    inputs: dict
    expected: list


def _trace(name: str, module, dims: ModelDims, folder: Path, opset: int, vshape, bar) -> _Traced:
    """PyTorch's reference outputs of component ``name``, then its fp32 graph traced into ``folder``."""
    spec = COMPONENTS[name]
    sizes = dims.sizes(spec.batch[1], *vshape)
    inputs = example_inputs(spec, sizes)
    with step(bar, f"{name}: PyTorch reference outputs", log):
        expected = reference_outputs(module, spec, inputs)
    path = folder / graph_filename(name, "fp32")
    start = time.perf_counter()
    with step(bar, f"{name}: ONNX export", log):
        export_graph(module, spec, inputs, path, opset)
    return _Traced(name, path, time.perf_counter() - start, sizes, inputs, expected)


def _checked_entry(graph: _Traced, dims: ModelDims, ranges, bar) -> ComponentEntry:
    """The manifest entry of a traced graph, validated against PyTorch's outputs on ONNX Runtime and
    checked for deployability."""
    spec, path = COMPONENTS[graph.name], graph.path
    with step(bar, f"{graph.name}: validation on ONNX Runtime", log):
        metrics = validate_graph(path, spec, None, graph.inputs, expected=graph.expected)
    log.info("%s: exported in %.1f s, validated: %s", graph.name, graph.seconds, metrics)
    with step(bar, f"{graph.name}: deployability check", log):
        graph_axes = _graph_axes(path)
        deployability = check_deployable(path)
    return ComponentEntry(
        inputs=[{"name": t.name, "dims": list(t.dims), "dtype": t.dtype} for t in spec.inputs],
        outputs=[{"name": t.name, "dims": list(t.dims), "dtype": t.dtype} for t in spec.outputs],
        profile=profile_shapes(spec, dims, *ranges), graph_axes=graph_axes,
        fixed_axes=_fixed_axes(spec, graph_axes),
        graphs={"fp32": GraphEntry(
            file=path.name, data=data_filename(path), bytes=graph_bytes(path), seconds=round(graph.seconds, 3),
            validation=Accuracy(shape=graph.sizes, reference="fp32 PyTorch module", outputs=metrics),
            deployability=deployability)},
    )


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
