"""int8 / fp8 post-training quantization of one ONNX graph into an explicit, symmetric Q/DQ graph
on an fp16 base (:func:`quantize_graph`, path in, path out), and the check that a graph is one
(:func:`validate_qdq_graph`).

The quantizer is ONNX Runtime's (``onnxruntime.quantization.quantize_static`` in QDQ format):
it runs the fp32 graph over the calibration samples, picks a scale per activation tensor
(int8: min/max; fp8 E4M3: ORT's ``Distribution`` method, the only one it offers for float8) and
per output channel of each weight, and writes ``QuantizeLinear``/``DequantizeLinear`` pairs on
the inputs of the convolutions and matmuls (:data:`QUANTIZED_OP_TYPES`). Activations and weights
are symmetric (every zero point is 0), as TensorRT requires for explicit quantization;
:func:`validate_qdq_graph` holds each written graph to that.

Why not NVIDIA Model Optimizer (``modelopt.onnx.quantization``): its ``[onnx]`` extra pulls
``onnxruntime-gpu`` (the same module as the CPU ``onnxruntime`` this project depends on) and
``cupy-cuda12x`` and pins an older ``onnx``; installed without those it ran, but took 198 s for
the tiny UNet (mostly its fp16 post-processing) against 21 s here. See docs/quantization.md.

The default exclusions (:data:`DEFAULT_EXCLUDE`) follow NVIDIA Model Optimizer's diffusion recipe
(``examples/diffusers/quantization``, ``filter_func``: ``time_emb_proj|time_embedding|conv_in|
conv_out|conv_shortcut|add_embedding|pos_embed|...`` stay unquantized): the timestep and
added-time (micro-conditioning) embeddings carry a few scalars through wide layers and lose them
under 8-bit scales, and the first and last convolutions and the residual shortcuts see the
full-range signal. Users change the list with ``svdtrt quantize --exclude PATTERN ...`` (which
replaces it).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..environment import onnxruntime_package, package_version
from ..errors import InputError, QuantizationError
from .files import data_path
from .fp16 import convert_to_fp16

#: Opset of the Q/DQ graphs: QuantizeLinear / DequantizeLinear take fp16 scales from opset 19 on
#: (and fp8 E4M3 needs 19 anyway).
FP16_QDQ_OPSET = 19

#: What :func:`quantize_graph` does, in order: ONNX Runtime's ``quantize_static`` first copies the
#: graph with every tensor to calibrate as an output and opens a session on it
#: (``calibrate.py: augment_graph``), runs it over the samples (``collect_data``), then computes
#: each weight's per-channel scale, quantizes it and inserts the Q/DQ pairs
#: (``qdq_quantizer.py: quantize_model``) and writes the graph; then the fp16 converter retypes it.
#: The third stage, after the last sample, is the longest on CPU (profiled on ``mid``).
STAGES = ("ONNX Runtime's quantizer: calibration graph", "ONNX Runtime's quantizer: calibration pass",
          "ONNX Runtime's quantizer: weight scales and Q/DQ nodes", "fp16 base of the Q/DQ graph")

#: Ops that get Q/DQ on their inputs: what TensorRT runs in 8 bits (convolutions and matmuls).
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")

#: Node-name regular expressions (``re.search`` on the exported ONNX node name, e.g.
#: ``/unet/time_embedding/linear_1/Gemm``) kept in higher precision by default.
DEFAULT_EXCLUDE = (
    r"time_embedding",   # timestep embedding MLP
    r"add_embedding",    # added-time-ids (fps, motion bucket, noise) embedding MLP
    r"time_emb_proj",    # each ResNet block's projection of the time embedding
    r"time_pos_embed",   # the temporal transformers' frame-position embedding
    r"conv_in",          # first convolution
    r"conv_out",         # last convolution (also the temporal decoder's time_conv_out)
    r"conv_shortcut",    # residual shortcut convolutions
)


def compile_patterns(patterns: Iterable[str]) -> list[re.Pattern]:
    """Compile exclusion patterns.

    Raises:
        InputError: a pattern is not a valid regular expression.
    """
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise InputError(f"--exclude pattern '{p}' is not a valid regular expression ({e})") from None
    return compiled


def excluded_nodes(graph, patterns: Iterable[str]) -> list[str]:
    """Names of the quantizable nodes of ``graph`` (an ``onnx.GraphProto``) matched by ``patterns``."""
    compiled = compile_patterns(patterns)
    return [n.name for n in graph.node
            if n.op_type in QUANTIZED_OP_TYPES and any(p.search(n.name) for p in compiled)]


def _data_reader(samples: Iterator[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class ShardReader(CalibrationDataReader):
        """Feeds ORT's calibrator one recorded call at a time (the shards stay on disk until read)."""

        def get_next(self):
            return next(samples, None)

    return ShardReader()


def quantize_graph(source: Path, target: Path, samples: Iterator[dict[str, np.ndarray]], settings: dict,
                   exclude: Iterable[str], quantize_bias: bool = False,
                   stage: Callable[[str], None] = lambda what: None) -> dict:
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
        source: an fp32 graph; ONNX Runtime's quantizer writes a shape-inferred copy beside it.
        target: the Q/DQ graph to write.
        samples: calibration inputs, one call's ``{input_name: array}`` at a time.
        settings: the precision's quantizer settings (:attr:`svdtrt.precisions.Precision.quantizer`:
            ``quant_type``, a ``QuantType`` name; ``calibrate_method``, a ``CalibrationMethod``
            name; ``per_channel``).
        exclude: node-name regular expressions kept in fp32 (:data:`DEFAULT_EXCLUDE`).
        quantize_bias: also quantize Conv/Gemm biases to int32 (DequantizeLinear from int32). Off by
            default because TensorRT's DequantizeLinear does not take int32; on, ONNX Runtime's CPU
            provider can fuse each Conv into QLinearConv (faster on a CPU, see docs/quantization.md).
        stage: told the name of each stage as it starts (:data:`STAGES`, in order), for a progress
            bar: the quantizer's one call runs for minutes at SVD scale, most of it after the last
            sample is read.
    Returns:
        What was done: quantizer, settings, excluded node names.
    Raises:
        InputError: an exclusion pattern is not a valid regular expression.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_qdq = target.with_name(target.name.removesuffix(".onnx") + ".fp32-base.onnx")
    excluded = excluded_nodes(onnx.load(source, load_external_data=False).graph, exclude)
    quant_type = getattr(QuantType, settings["quant_type"])

    def read() -> Iterator[dict[str, np.ndarray]]:  # tells the stages of quantize_static's one call
        for i, sample in enumerate(samples):
            if i == 0:
                stage(STAGES[1])
            yield sample
        stage(STAGES[2])

    advice = _DropAdvice()
    logging.getLogger().addFilter(advice)
    stage(STAGES[0])
    try:
        quantize_static(
            str(source), str(fp32_qdq), _data_reader(read()), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=settings["per_channel"],
            activation_type=quant_type, weight_type=quant_type, nodes_to_exclude=excluded,
            calibrate_method=getattr(CalibrationMethod, settings["calibrate_method"]),
            use_external_data_format=True, calibration_providers=["CPUExecutionProvider"],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": quantize_bias},
        )
    finally:
        logging.getLogger().removeFilter(advice)
    stage(STAGES[3])
    fp16 = convert_to_fp16(fp32_qdq, target, min_opset=FP16_QDQ_OPSET)
    for path in (fp32_qdq, data_path(fp32_qdq)):
        path.unlink()
    for path in (target, data_path(target)):
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
