"""int8 / fp8 post-training quantization of a bundle's graphs into explicit, symmetric Q/DQ graphs.

The quantizer is ONNX Runtime's (``onnxruntime.quantization.quantize_static`` in QDQ format):
it runs the fp32 graph over the calibration shards, picks a scale per activation tensor
(int8: min/max; fp8 E4M3: ORT's ``Distribution`` method, the only one it offers for float8) and
per output channel of each weight, and writes ``QuantizeLinear``/``DequantizeLinear`` pairs on
the inputs of the convolutions and matmuls (:data:`~svdtrt.calibration.recipe.QUANTIZED_OP_TYPES`).
Activations and weights are symmetric (every zero point is 0), as TensorRT requires for
explicit quantization; :func:`validate_qdq_graph` holds each written graph to that.

Why not NVIDIA Model Optimizer (``modelopt.onnx.quantization``): its ``[onnx]`` extra pulls
``onnxruntime-gpu`` (the same module as the CPU ``onnxruntime`` this project depends on) and
``cupy-cuda12x`` and pins an older ``onnx``; installed without those it ran, but took 198 s for
the tiny UNet (mostly its fp16 post-processing) against 21 s here. See docs/quantization.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..bundle.manifest import GraphEntry, Quantization
from ..bundle.store import Bundle, changing, graph_filename
from ..environment import onnxruntime_package, package_version
from ..errors import InputError, QuantizationError
from ..precisions import made_by
from ..precisions import precision as lookup_precision
from ..publishing import checkpoint
from .derived import component_samples, sample_count
from .recipe import CALIBRATED_FROM, DEFAULT_EXCLUDE, QUANTIZED_COMPONENTS, QUANTIZED_OP_TYPES, excluded_nodes
from .shards import SPLITS, CalibrationSet

log = logging.getLogger(__name__)

#: Opset of the Q/DQ graphs: QuantizeLinear / DequantizeLinear take fp16 scales from opset 19 on
#: (and fp8 E4M3 needs 19 anyway).
FP16_QDQ_OPSET = 19


def check_precision(precision: str, bundle=None) -> dict:
    """The quantizer settings of ``precision`` (from :mod:`svdtrt.precisions`).

    Args:
        bundle: the bundle's path, to name the command that makes ``precision`` in it.
    Raises:
        InputError: an unknown precision, or one not made by quantization.
        BundleError: ``bundle`` is given, ``precision`` is not quantized and ``bundle`` is no bundle.
    """
    p = lookup_precision(precision)
    if not p.quantized:
        made = (f"'{Bundle.open(bundle).make_command(p.name)}'" if bundle is not None
                else f"svdtrt's {p.made_by} command")
        raise InputError(f"quantize makes {', '.join(made_by('quantize'))} graphs; {precision} is made with {made}")
    return p.quantizer


def _data_reader(samples: Iterator[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class ShardReader(CalibrationDataReader):
        """Feeds ORT's calibrator one recorded call at a time (the shards stay on disk until read)."""

        def get_next(self):
            return next(samples, None)

    return ShardReader()


def quantize_graph(source: Path, target: Path, samples: Iterator[dict[str, np.ndarray]], precision: str,
                   exclude: Iterable[str], quantize_bias: bool = False) -> dict:
    """Quantize the fp32 graph at ``source`` into a Q/DQ graph on an fp16 base at ``target``
    (+ ``target.data``).

    Two steps (docs/quantization.md, "fp16 base"): ONNX Runtime's quantizer calibrates and
    places the Q/DQ pairs on the fp32 graph (its calibrator runs fp32 graphs; the scales come
    from fp32 activations, as in NVIDIA Model Optimizer's flow); then the fp16 converter that
    makes the fp16 graphs (:func:`svdtrt.graphs.fp16.convert_to_fp16`) retypes everything outside
    the integer weights to fp16, scales included, at opset 19, so each DequantizeLinear outputs
    fp16 and every op between the Q/DQ pairs computes in fp16 in TensorRT's strongly typed build.
    What stays fp32 is the fp16 graphs' list (the sinusoidal time embeddings).

    Args:
        samples: calibration inputs, one call's ``{input_name: array}`` at a time.
        precision: ``"int8"`` or ``"fp8"``.
        exclude: node-name regular expressions kept in fp32 (:mod:`svdtrt.calibration.recipe`).
        quantize_bias: also quantize Conv/Gemm biases to int32 (DequantizeLinear from int32). Off by
            default because TensorRT's DequantizeLinear does not take int32; on, ONNX Runtime's CPU
            provider can fuse each Conv into QLinearConv (faster on a CPU, see docs/quantization.md).
    Returns:
        What was done: quantizer, settings, excluded node names.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..graphs.fp16 import convert_to_fp16

    settings = check_precision(precision)
    fp32_qdq = target.with_name(target.name.removesuffix(".onnx") + ".fp32-base.onnx")
    excluded = excluded_nodes(onnx.load(source, load_external_data=False).graph, exclude)
    quant_type = getattr(QuantType, settings["quant_type"])
    advice = _DropAdvice()
    logging.getLogger().addFilter(advice)
    try:
        quantize_static(
            str(source), str(fp32_qdq), _data_reader(samples), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=settings["per_channel"],
            activation_type=quant_type, weight_type=quant_type, nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, settings["calibrate_method"]),
            use_external_data_format=True, calibration_providers=["CPUExecutionProvider"],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": quantize_bias},
        )
    finally:
        logging.getLogger().removeFilter(advice)
    fp16 = convert_to_fp16(fp32_qdq, target, min_opset=FP16_QDQ_OPSET)
    for path in (fp32_qdq, _data_path(fp32_qdq)):
        path.unlink()
    for path in (target, _data_path(target)):
        os.chmod(path, 0o644)  # ORT writes the data file private; a bundle is an ordinary directory
    return {
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ)",
        "onnxruntime": package_version(onnxruntime_package() or "onnxruntime"),
        **settings, "symmetric": True, "quantize_bias": quantize_bias, "op_types": list(QUANTIZED_OP_TYPES),
        "base": "fp16", "opset": FP16_QDQ_OPSET, "fp32_ops": fp16["fp32_ops"],
        "exclude_patterns": list(exclude), "excluded_nodes": excluded,
    }


class _DropAdvice(logging.Filter):
    """Drops ORT's advice to run its pre-processing (shape inference and fusions), logged on the root
    logger for every graph; the exported graphs already carry shapes and need no fusing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _data_path(graph: Path) -> Path:
    """ORT's quantizer writes the weights beside the graph as ``<graph>.data``."""
    return graph.with_name(graph.name + ".data")


def validate_qdq_graph(path: Path, remedy: str | None = None) -> dict:
    """Check that the graph at ``path`` is an explicit, symmetric Q/DQ graph; ``remedy`` is the
    command that makes it again, for the messages.

    Returns:
        ``{"quantize_linear": n, "dequantize_linear": n, "quantized_ops": {"Conv": n, "MatMul": n, ...},
        "zero_points": n}``; an op counts as quantized when one of its inputs comes from a
        ``DequantizeLinear``.
    Raises:
        QuantizationError: the graph is unreadable, has no Q/DQ node or no quantized op, or a
            zero point is not all zeros (or not a constant that can be checked).
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # OSError, or protobuf's DecodeError (which has no stable import path)
        raise QuantizationError(f"quantized graph '{path}' is unreadable ({type(e).__name__}); "
                                f"{_again(remedy)}") from None
    graph = model.graph
    ops = Counter(n.op_type for n in graph.node)
    if not ops["QuantizeLinear"] or not ops["DequantizeLinear"]:
        raise QuantizationError(f"'{path.name}' has no Q/DQ node (QuantizeLinear {ops['QuantizeLinear']}, "
                                f"DequantizeLinear {ops['DequantizeLinear']}); it is not a quantized graph, "
                                f"{_again(remedy)}")
    initializers = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n.attribute[0].t for n in graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    checked = 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
            continue  # no zero-point input: ONNX defines it as 0
        zp = node.input[2]
        tensor = initializers.get(zp) or constants.get(zp)
        if tensor is None:
            raise QuantizationError(f"'{path.name}': zero point '{zp}' of {node.name} is computed in the graph, "
                                    "so it cannot be checked to be 0; TensorRT needs constant zero points")
        values = numpy_helper.to_array(tensor, base_dir=str(path.parent))
        if np.any(values.astype(np.float32) != 0):
            raise QuantizationError(f"'{path.name}': {node.name} has non-zero zero point(s) in '{zp}' "
                                    f"(e.g. {values.ravel()[np.flatnonzero(values.astype(np.float32))[0]]}); "
                                    "TensorRT needs symmetric quantization, quantize again with 'svdtrt quantize'")
        checked += 1
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = Counter(n.op_type for n in graph.node
                        if n.op_type in QUANTIZED_OP_TYPES and any(i in dq_outputs for i in n.input))
    if not quantized:
        raise QuantizationError(f"'{path.name}' has Q/DQ nodes but no quantized convolution or matmul; "
                                "check the --exclude patterns")
    return {"quantize_linear": ops["QuantizeLinear"], "dequantize_linear": ops["DequantizeLinear"],
            "quantized_ops": dict(quantized), "zero_points": checked}


def _again(remedy: str | None) -> str:
    return f"make it again with '{remedy}'" if remedy else "quantize the bundle again with --force"


def quantize_bundle(bundle_path, precision: str, calibration: str = "default",
                    exclude: Iterable[str] = DEFAULT_EXCLUDE, force: bool = False, model=None,
                    progress: bool = True, quantize_bias: bool = False) -> dict[str, GraphEntry]:
    """Write ``<component>.<precision>.onnx`` for the quantized components, in one bundle transaction.

    For each of :data:`~svdtrt.calibration.recipe.QUANTIZED_COMPONENTS` the bundle has (the
    block-caching graphs ``unet_full`` and ``unet_shallow`` only where it was exported with them):
    quantize the fp32 graph over the set's calibration split, validate it
    (:func:`validate_qdq_graph`), and measure it against the fp32 PyTorch module on the held-out
    split (:func:`~svdtrt.calibration.evaluate.held_out_accuracy`). The caching graphs are
    calibrated and measured on the UNet's recorded calls, ``unet_shallow`` with the deep feature
    the fp32 ``unet_full`` graph returns on each (:mod:`svdtrt.calibration.derived`), and then
    read the quantized UNet's weights file where every tensor of theirs matches one in it byte for
    byte (:func:`svdtrt.export.convert.share_weights`; otherwise they keep their own). The other
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
        quantize_bias: int32 biases for ONNX Runtime CPU deployment (see :func:`quantize_graph`).
    Returns:
        ``{component: manifest graph entry}`` of the quantized components.
    Raises:
        InputError: unknown precision, bad pattern, no such calibration set, existing graphs
            without ``force``, a read-only bundle.
        QuantizationError: missing, corrupt or mismatched calibration data; an invalid Q/DQ graph.
    """
    from tqdm import tqdm

    from ..export.convert import share_weights
    from ..graphs.files import graph_bytes
    from ..graphs.fp16 import arithmetic_precision
    from ..models.loading import reference_model
    from .evaluate import held_out_accuracy

    check_precision(precision, bundle_path)
    exclude = list(exclude)
    with changing(bundle_path) as staged:
        bundle = staged.old
        calib = CalibrationSet(bundle, calibration)
        components = staged.manifest.components
        existing = [c for c in components if precision in components[c].graphs]
        if existing and not force:
            raise InputError(f"bundle '{bundle.path}' already has {precision} graphs ({', '.join(existing)}); "
                             "pass --force to replace them")
        names = [n for n in QUANTIZED_COMPONENTS if n in components]
        for recorded in dict.fromkeys(CALIBRATED_FROM[n] for n in names):
            for split in SPLITS:  # fail on missing, corrupt or mismatched data before any long work
                for _ in calib.samples(recorded, split):
                    pass
        model = reference_model(bundle, model)
        scratch = staged.scratch("quantize")
        # unet_shallow's deep_feature comes from the fp32 unet_full graph (calibration/derived.py).
        full_graph = bundle.path / components["unet_full"].graphs["fp32"].file if "unet_full" in components else None
        # Every old file of this precision goes first: a weights file may be read by several graphs
        # (the caching graphs read the UNet's), and a new file may take an old one's name.
        for component in components.values():
            old = component.graphs.get(precision)
            if old is not None and not old.kept_precision:
                for file in (old.file, old.data):
                    staged.remove(file)
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
            bar = tqdm(component_samples(calib, name, full_graph=full_graph), total=sample_count(calib, name),
                       desc=f"{stage}: calibrating", unit="sample", disable=not progress)
            done = quantize_graph(scratch / fp32.file, target, iter(bar), precision, exclude, quantize_bias)
            bar.close()
            seconds = time.perf_counter() - start
            for file in (target, _data_path(target)):
                shutil.move(file, staged.path / file.name)
            staged_graph = staged.path / target.name
            qdq = {**validate_qdq_graph(staged_graph), "arithmetic": arithmetic_precision(staged_graph)}
            # The caching graphs read the quantized UNet's weights file where every tensor matches.
            graph = share_weights(staged, name, precision, GraphEntry(
                file=target.name, data=_data_path(target).name, bytes=graph_bytes(staged_graph),
                seconds=round(seconds, 3)))
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
        for name, component in components.items():
            fp32 = component.graphs["fp32"]
            component.graphs[precision] = entries.get(name) or GraphEntry(
                file=fp32.file, data=fp32.data, bytes=fp32.bytes, kept_precision="fp32")
        for key, engine in list(staged.manifest.engines.items()):  # engines of the replaced graphs
            if engine.precision == precision:
                staged.remove(engine.engine)
                staged.remove(engine.sidecar)
                del staged.manifest.engines[key]
        staged.commit()
    return entries
