"""The precision registry: every fact about a graph precision, in one table every stage reads
(docs/architecture.md, "Precisions").

A precision says how its graphs are made (``export``, ``convert`` or ``quantize``), the dtype
of the graph's compute, the accuracy thresholds ``svdtrt check`` holds it to, how its accuracy
is measured on a CPU, which backends run it, the quantizer settings where it is quantized, and
the lowest GPU compute capability with tensor cores for it. Adding a precision (bf16, fp4) is
one entry here; the CLI's choices, the hints that name the command that creates a missing
graph (:mod:`svdtrt.hints`), ``check``'s thresholds, ``quantize``, ``build`` and ``bench`` all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InputError


@dataclass(frozen=True)
class Thresholds:
    """What ``svdtrt check`` passes: the clip's worst-frame PSNR against diffusers' clip (dB)
    and every component output's worst cosine similarity against the PyTorch module."""

    clip_min_psnr_db: float
    component_min_cosine: float


@dataclass(frozen=True)
class Precision:
    """One graph precision.

    Attributes:
        name: the name on the command line and in file names (``unet.<name>.onnx``).
        dtype: the dtype the graph computes its main ops in (numpy / ONNX naming).
        made_by: ``"export"`` (traced from PyTorch), ``"convert"`` (an ONNX-level conversion of
            the bundle's fp32 graphs) or ``"quantize"`` (Q/DQ graphs from a calibration set).
        thresholds: the limits of ``svdtrt check``.
        measured_by: how the accuracy numbers of this precision are produced on a CPU.
        backends: the backends that run graphs or engines of this precision.
        quantizer: ``onnxruntime.quantization.quantize_static`` settings (quantized precisions).
        min_compute_capability: the lowest CUDA compute capability whose tensor cores run it in
            a TensorRT engine (None: every GPU TensorRT supports).
    """

    name: str
    dtype: str
    made_by: str
    thresholds: Thresholds
    measured_by: str
    backends: tuple[str, ...]
    quantizer: dict = field(default_factory=dict)
    min_compute_capability: tuple[int, int] | None = None

    @property
    def quantized(self) -> bool:
        return self.made_by == "quantize"

    @property
    def float_dtype(self) -> str:
        """The float type of the graph's activations and of its arithmetic outside quantized ops:
        ``dtype`` for a float precision, float16 for the Q/DQ graphs, which are built on an fp16
        base (docs/architecture.md, "Precisions")."""
        return "float16" if self.quantized else self.dtype


#: Every precision svdtrt knows, in the order tables list them.
#:
#: Thresholds come from measurements with margin (docs/export.md, docs/quantization.md): fp16 on
#: the tiny preset measured clip 74.1 dB and worst component cosine 0.9999988, svd-xt's full-size
#: fp16 graphs >= 0.9999 per component, and 40 dB is about 1 % RMS error; int8 gave clips of
#: 33.7-36.8 dB (tiny) and 30.9 dB (mid) with UNet cosine 0.994-0.995; fp8, simulated with ORT's
#: Distribution-calibrated scales, 23.3 dB and 0.91 (tiny). fp8 tensor cores start at compute
#: capability 8.9 (Ada; Hopper is 9.0); Jetson AGX Orin is 8.7.
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "float32", "export", Thresholds(60.0, 0.9999),
              "onnxruntime CPU running the fp32 graph",
              backends=("torch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt")),
    Precision("fp16", "float16", "convert", Thresholds(40.0, 0.999),
              "onnxruntime CPU running the fp16 graph (fp16 kernels where it has them)",
              backends=("torch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt")),
    Precision("int8", "int8", "quantize", Thresholds(28.0, 0.98),
              "onnxruntime CPU running the int8 Q/DQ graph on its fp16 base (int8 kernels where it fuses "
              "Q/DQ; fp16 ops without a CPU kernel computed in fp32 on fp16-rounded values)",
              backends=("onnxruntime", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt"),
              quantizer={"quant_type": "QInt8", "calibrate_method": "MinMax", "per_channel": True}),
    Precision("fp8", "float8_e4m3fn", "quantize", Thresholds(20.0, 0.88),
              "simulated: onnxruntime CPU running the fp8 Q/DQ nodes unfused on the fp16 base (fp16 ops "
              "without a CPU kernel computed in fp32 on fp16-rounded values)",
              backends=("onnxruntime", "tensorrt"),
              # Weights per tensor: TensorRT fuses fp8 Q/DQ into an fp8 GEMM with per-channel weight
              # scales only from 10.6 and only on Hopper (docs/tensorrt.md, "Second audit", defect 8).
              quantizer={"quant_type": "QFLOAT8E4M3FN", "calibrate_method": "Distribution", "per_channel": False},
              min_compute_capability=(8, 9)),
)}

#: The names, for argparse ``choices`` and messages.
NAMES: tuple[str, ...] = tuple(PRECISIONS)


def precision(name: str) -> Precision:
    """The registry entry called ``name``.

    Raises:
        InputError: ``name`` is not a known precision; the message lists the choices.
    """
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown precision '{name}': choose from {', '.join(NAMES)}") from None


def made_by(kind: str) -> tuple[str, ...]:
    """Names of the precisions made by ``kind`` (``export``, ``convert`` or ``quantize``)."""
    return tuple(n for n, p in PRECISIONS.items() if p.made_by == kind)
