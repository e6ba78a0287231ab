"""``svdtrt convert``: fp16 graphs as a bundle operation, from the bundle's own fp32 graphs.

fp16 is an ONNX-level conversion of the validated fp32 graph (:mod:`svdtrt.graphs.fp16`), so
adding it needs neither the source model nor a re-export. Each fp16 graph is validated on
ONNX Runtime's CPU provider against the fp32 graph's outputs at the inputs the fp32 graph was
validated with (the fp32 graph itself matches PyTorch to about 1e-6), with the spec's fp16
tolerances (:class:`svdtrt.specs.Fp16Tolerance`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..bundle.manifest import Accuracy, GraphEntry
from ..bundle.store import Bundle, changing, graph_filename
from ..errors import InputError
from ..graphs.deployability import check_deployable
from ..graphs.files import data_filename, graph_bytes
from ..graphs.fp16 import convert_to_fp16
from ..graphs.sessions import open_session
from ..models.modules import example_inputs
from ..precisions import made_by
from ..precisions import precision as lookup_precision
from ..progress import step, ticking
from ..specs import COMPONENTS, runs_fp32_in_fp16, with_caching_graphs
from .validation import validate_graph

log = logging.getLogger(__name__)


def fp16_graph(configs: dict, fp32: GraphEntry, source: Path, folder: Path, name: str, sizes: dict[str, int],
               inputs: dict[str, torch.Tensor], expected: list[torch.Tensor]) -> GraphEntry:
    """The fp16 precision's graph of component ``name``: the fp32 graph itself where the model's
    ``configs`` keep the component in fp32 under fp16 as diffusers does
    (:func:`svdtrt.specs.runs_fp32_in_fp16`: SVD's VAE encoder, ``force_upcast``), else
    :func:`convert_component`'s fp16 graph (same arguments)."""
    if runs_fp32_in_fp16(COMPONENTS[name], configs):
        log.info("%s: fp16 runs the fp32 graph (the model's config sets %s)", name, COMPONENTS[name].fp16_upcast[1])
        return GraphEntry(file=fp32.file, data=fp32.data, bytes=fp32.bytes, kept_precision="fp32")
    return convert_component(source, folder, name, sizes, inputs, expected)


def convert_component(source: Path, folder: Path, name: str, sizes: dict[str, int],
                      inputs: dict[str, torch.Tensor], expected: list[torch.Tensor]) -> GraphEntry:
    """Convert ``source``'s fp32 graph of component ``name`` to fp16 in ``folder`` and validate it.

    Args:
        source: the folder holding ``<name>.fp32.onnx`` and its weights.
        folder: the (staged) bundle folder to write ``<name>.fp16.onnx`` into.
        sizes: the symbol sizes of the validation inputs (:meth:`svdtrt.specs.ModelDims.sizes`).
        inputs: the validation inputs (spec order).
        expected: the reference outputs on ``inputs`` (PyTorch's, or the fp32 graph's).
    Returns:
        The fp16 graph's manifest entry.
    Raises:
        AccuracyError: an output misses the spec's fp16 tolerances.
        ExportError: the conversion could not be written.
    """
    spec = COMPONENTS[name]
    half = folder / graph_filename(name, "fp16")
    start = time.perf_counter()
    info = convert_to_fp16(source / graph_filename(name, "fp32"), half, spec.fp16_fp32_ops)
    seconds = time.perf_counter() - start
    tol = spec.fp16
    metrics = validate_graph(half, spec, None, inputs, max_rel_error=float("inf"), min_cosine=tol.min_cosine,
                             min_psnr_db=tol.min_psnr_db, expected=expected)
    log.info("%s: fp16 converted in %.1f s, validated: %s", name, seconds, metrics)
    return GraphEntry(
        file=half.name, data=data_filename(half), bytes=graph_bytes(half), seconds=round(seconds, 3),
        conversion=info,
        validation=Accuracy(shape=sizes, reference="fp32 reference",
                            tolerances={"min_cosine": tol.min_cosine, "min_psnr_db": tol.min_psnr_db},
                            outputs=metrics),
        deployability=check_deployable(half))


def convert_bundle(path: str | Path, precision: str = "fp16", force: bool = False,
                   progress: bool = True, components: list[str] | None = None) -> Bundle:
    """Add ``precision`` graphs converted from the bundle's fp32 graphs, in one transaction.

    Each fp32 graph and weights file is hashed against the manifest before it is converted
    (:meth:`~svdtrt.bundle.store.Bundle.check_file`): a corrupted source is refused with the
    command that repairs it, not converted into a wrong graph.

    Args:
        path: the bundle.
        precision: a precision the registry makes by ``convert`` (fp16).
        force: replace existing graphs of that precision (and drop the engines built from them).
        components: the components to convert (default: all the bundle has); ``unet`` brings
            the block-caching graphs, which read its weights file.
    Returns:
        The re-opened bundle.
    Raises:
        InputError: a precision not made by conversion, a component the bundle lacks, or existing
            graphs without ``force``.
        BundleError: no bundle at ``path``; a source graph that does not match its record or that
            ONNX Runtime cannot load.
        AccuracyError: a converted graph misses its tolerance (the bundle is unchanged).
    """
    from tqdm import tqdm

    p = lookup_precision(precision)
    if p.made_by != "convert":
        raise InputError(f"convert makes {', '.join(made_by('convert'))} graphs; {precision} is made with "
                         f"'{Bundle.open(path).make_command(p.name)}'")
    with changing(path) as staged:
        bundle, entries = staged.old, staged.manifest.components
        asked = list(dict.fromkeys(components or entries))
        names = [n for n in with_caching_graphs(asked) if n in entries or n in asked]  # caching graphs are optional
        lacking = [n for n in names if n not in entries]
        if lacking:
            raise InputError(f"bundle '{path}' has no {', '.join(lacking)} graphs to convert (has: "
                             f"{', '.join(entries)})")
        existing = [c for c in names if precision in entries[c].graphs]
        if existing and not force:
            raise InputError(f"bundle '{path}' already has {precision} graphs ({', '.join(existing)}); "
                             "pass --force to replace them")
        names = [n for n in entries if n in names]  # the manifest's order: unet before its caching graphs
        bar = tqdm(total=len(names), desc=f"convert {precision}", unit="graph", disable=not progress)
        with bar, ticking(bar):
            for name in names:
                staged.drop_graph(name, precision)  # with the engines built from it
                fp32 = entries[name].graphs["fp32"]
                spec = COMPONENTS[name]
                inputs = example_inputs(spec, fp32.validation.shape)
                with step(bar, f"{name}: fp32 graph's check and reference outputs", log):
                    for file in (fp32.file, fp32.data):
                        if file:
                            bundle.check_file(file)
                    expected = _fp32_outputs(bundle, fp32, spec, inputs)
                with step(bar, f"{name}: {precision} conversion and validation", log):
                    graph = fp16_graph(staged.manifest.configs, fp32, bundle.path, staged.path, name,
                                       fp32.validation.shape, inputs, expected)
                    entries[name].graphs[precision] = staged.share_weights(name, precision, graph)
                bar.update()
        return staged.commit()


def _fp32_outputs(bundle: Bundle, fp32: GraphEntry, spec, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The fp32 graph's outputs on ``inputs``: what its fp16 graph is validated against.

    Raises:
        BundleError: ONNX Runtime cannot load or run the graph (e.g. its external data points
            outside the bundle); the message names the file and the command that repairs it.
    """
    try:
        session = open_session(bundle.path / fp32.file, "validate")
        outputs = session.run(spec.output_names, {n: inputs[n].numpy() for n in spec.input_names})
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
        raise bundle.unloadable(fp32.file, e) from None
    return [torch.from_numpy(a) for a in outputs]
