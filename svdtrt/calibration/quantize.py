"""``svdtrt quantize``: a bundle's int8 / fp8 Q/DQ graphs, from one of its calibration sets, in
one bundle transaction.

Each graph is quantized by :func:`svdtrt.graphs.qdq.quantize_graph` (ONNX Runtime's quantizer,
explicit symmetric Q/DQ on an fp16 base; docs/quantization.md) with the precision's quantizer
settings from :mod:`svdtrt.precisions`; this module decides which components, from which
recorded calls (:mod:`svdtrt.calibration.recipe`), and records the result in the manifest.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Iterator

from ..bundle.manifest import GraphEntry, Quantization
from ..bundle.store import Bundle, changing, graph_filename
from ..errors import InputError
from ..graphs.files import data_path, graph_bytes
from ..graphs.fp16 import arithmetic_precision
from ..graphs.qdq import DEFAULT_EXCLUDE, quantize_graph, validate_qdq_graph
from ..precisions import made_by
from ..precisions import precision as lookup_precision
from ..progress import Steps, ticking
from ..publishing import checkpoint
from ..specs import COMPONENTS
from .derived import component_samples, sample_count
from .recipe import CALIBRATED_FROM, QUANTIZED_COMPONENTS
from .shards import SPLITS, CalibrationSet

log = logging.getLogger(__name__)


def check_precision(precision: str, bundle_path) -> dict:
    """The quantizer settings of ``precision`` (:attr:`svdtrt.precisions.Precision.quantizer`).

    Raises:
        InputError: an unknown precision, or one not made by quantization (the message names the
            command that makes it in the bundle at ``bundle_path``).
        BundleError: ``precision`` is not quantized and ``bundle_path`` is no bundle.
    """
    p = lookup_precision(precision)
    if not p.quantized:
        raise InputError(f"quantize makes {', '.join(made_by('quantize'))} graphs; {precision} is made with "
                         f"'{Bundle.open(bundle_path).make_command(p.name)}'")
    return p.quantizer


def quantize_bundle(bundle_path, precision: str, calibration: str = "default",
                    exclude: Iterable[str] = DEFAULT_EXCLUDE, force: bool = False, model=None,
                    progress: bool = True, quantize_bias: bool = False) -> dict[str, GraphEntry]:
    """Write ``<component>.<precision>.onnx`` for the quantized components, in one bundle transaction.

    For each of :data:`~svdtrt.calibration.recipe.QUANTIZED_COMPONENTS` the bundle has (the
    block-caching graphs ``unet_full`` and ``unet_shallow`` only where it was exported with them):
    quantize the fp32 graph over the set's calibration split (:func:`svdtrt.graphs.qdq.quantize_graph`),
    validate it (:func:`svdtrt.graphs.qdq.validate_qdq_graph`), and measure it against the fp32
    PyTorch module on the held-out split (:func:`~svdtrt.calibration.evaluate.held_out_accuracy`).
    The caching graphs are calibrated and measured on the UNet's recorded calls, ``unet_shallow``
    with the deep feature the fp32 ``unet_full`` graph returns on each
    (:mod:`svdtrt.calibration.derived`), and then read the quantized UNet's weights file where
    every tensor of theirs matches one in it byte for byte
    (:meth:`svdtrt.bundle.store.Staged.share_weights`; otherwise they keep their own). The other
    components' ``precision`` entries point at their fp32 graphs (they run once per clip). The
    quantizer works in a scratch folder outside the bundle (its ``*-inferred.onnx`` files never
    enter it); the graphs and the manifest entries appear together, or not at all.

    Args:
        bundle_path: the bundle.
        precision: ``"int8"`` or ``"fp8"``.
        calibration: name of the calibration set.
        exclude: node-name regular expressions kept in fp32; default the recipe's.
        force: replace existing graphs of this precision.
        model: the source :class:`SvdModel` for the held-out comparison; rebuilt if None.
        quantize_bias: int32 biases for ONNX Runtime CPU deployment (see
            :func:`svdtrt.graphs.qdq.quantize_graph`).
    Returns:
        ``{component: manifest graph entry}`` of the quantized components.
    Raises:
        InputError: unknown precision, bad pattern, no such calibration set, existing graphs
            without ``force``, a read-only bundle.
        QuantizationError: missing, corrupt or mismatched calibration data; an invalid Q/DQ graph.
    """
    from tqdm import tqdm

    from ..models.loading import reference_model
    from .evaluate import held_out_accuracy

    settings = check_precision(precision, bundle_path)
    exclude = list(exclude)
    with changing(bundle_path) as staged:
        bundle, components = staged.old, staged.manifest.components
        # 1. Refuse before any long work: a missing calibration set, graphs of this precision
        #    without --force, and calibration data that is missing, corrupt or mismatched.
        calib = CalibrationSet(bundle, calibration)
        existing = [c for c in components if precision in components[c].graphs]
        if existing and not force:
            raise InputError(f"bundle '{bundle.path}' already has {precision} graphs ({', '.join(existing)}); "
                             "pass --force to replace them")
        names = [n for n in QUANTIZED_COMPONENTS if n in components]
        # Every file read is hashed against the manifest first (once per file version:
        # Bundle.check_file): a corrupted graph or shard is refused with its repair, not quantized.
        recorded = list(dict.fromkeys(CALIBRATED_FROM[n] for n in names))
        inputs = [f for n in names for f in (components[n].graphs["fp32"].file, components[n].graphs["fp32"].data)]
        inputs += [f for r in recorded for split in SPLITS for f in calib.entry.shard_paths(r, split)]
        for file in dict.fromkeys(f for f in inputs if f):
            bundle.check_file(file)
        for r in recorded:
            for split in SPLITS:
                for _ in calib.samples(r, split):
                    pass

        # 2. The fp32 PyTorch model the quantized graphs are measured against, and the fp32
        #    unet_full graph that derives unet_shallow's deep_feature (calibration/derived.py).
        model = reference_model(bundle, model)
        full_graph = bundle.path / components["unet_full"].graphs["fp32"].file if "unet_full" in components else None

        # 3. Drop every old graph of this precision, and the engines built from them, first: a
        #    weights file may be read by several graphs (the caching graphs read the UNet's), and a
        #    new file may take an old one's name.
        for name in list(components):
            staged.drop_graph(name, precision)

        # 4. Quantize each component, in the order of QUANTIZED_COMPONENTS (the caching graphs
        #    after the UNet, whose quantized weights file they read).
        scratch = staged.scratch("quantize")
        entries = {}
        for i, name in enumerate(names, 1):
            # Two bars per graph, each naming its stage: the quantizer's calibration pass (it reads
            # the samples one by one) and the held-out evaluation against PyTorch.
            stage = f"quantize {precision} {i}/{len(names)} {name}"
            # The quantizer writes its shape-inferred copy beside the source: give it a copy in
            # the scratch folder (a copy, not a link: onnx refuses external data with several links).
            # The caching graphs' fp32 weights file is the UNet's, copied once.
            fp32 = bundle.graph(name, "fp32")
            for file in (fp32.file, fp32.data):
                if not (scratch / file).exists():
                    shutil.copyfile(bundle.path / file, scratch / file)
            target = scratch / graph_filename(name, precision)
            start = time.perf_counter()
            # The bar counts the samples of the calibration pass; its postfix names the quantizer's
            # stages (graphs/qdq.py: STAGES: most of its time is after the last sample) and the
            # checks after it, its clock ticking through each.
            bar = tqdm(total=sample_count(calib, name), desc=f"{stage}: calibrating", unit="sample",
                       disable=not progress)
            steps = Steps(bar, log, stage)
            with bar, ticking(bar):
                done = quantize_graph(scratch / fp32.file, target,
                                      _counted(component_samples(calib, name, full_graph=full_graph), bar),
                                      settings, exclude, quantize_bias, stage=steps)
                seconds = time.perf_counter() - start
                for file in (target, data_path(target)):
                    shutil.move(file, staged.path / file.name)
                staged_graph = staged.path / target.name
                steps("checking the Q/DQ graph and typing its arithmetic")
                qdq = {**validate_qdq_graph(staged_graph), "arithmetic": arithmetic_precision(staged_graph)}
                # The caching graphs read the quantized UNet's weights file where every tensor matches.
                if COMPONENTS[name].shares_weights_with:
                    steps(f"sharing {COMPONENTS[name].shares_weights_with}'s weights file")
                graph = staged.share_weights(name, precision, GraphEntry(
                    file=target.name, data=data_path(target).name, bytes=graph_bytes(staged_graph),
                    seconds=round(seconds, 3)))
                steps.close()
            accuracy = held_out_accuracy(
                staged_graph, name, precision, component_samples(calib, name, "held_out", full_graph),
                sample_count(calib, name, "held_out"), model, bundle.dims,
                progress=f"{stage}: held-out evaluation" if progress else False)
            log.info("%s %s: quantized in %.1f s, %s, weights in %s, held-out %s", name, precision, seconds, qdq,
                     graph.data, accuracy)
            checkpoint("quantize-component")
            entries[name] = graph.model_copy(update={"quantization": Quantization(
                calibration=calibration, calibration_samples=sample_count(calib, name),
                settings={k: v for k, v in done.items() if k != "excluded_nodes"},
                excluded_nodes=done["excluded_nodes"], qdq=qdq, held_out_accuracy=accuracy)})

        # 5. The components that are not quantized run their fp32 graphs at this precision.
        for name, component in components.items():
            fp32 = component.graphs["fp32"]
            component.graphs[precision] = entries.get(name) or GraphEntry(
                file=fp32.file, data=fp32.data, bytes=fp32.bytes, kept_precision="fp32")

        # 6. Publish the graphs and the manifest together.
        staged.commit()
    return entries


def _counted(samples: Iterable, bar) -> Iterator:
    """``samples``, counted on ``bar`` as each is taken (a bar that stays open when they run out)."""
    for sample in samples:
        yield sample
        bar.update()
