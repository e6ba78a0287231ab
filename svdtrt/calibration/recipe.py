"""The default quantization recipe: which components are quantized, which ops, and which nodes
stay in higher precision.

The exclusions follow NVIDIA Model Optimizer's diffusion recipe (``examples/diffusers/quantization``,
``filter_func``: ``time_emb_proj|time_embedding|conv_in|conv_out|conv_shortcut|add_embedding|
pos_embed|...`` stay unquantized): the timestep and added-time (micro-conditioning) embeddings
carry a few scalars through wide layers and lose them under 8-bit scales, and the first and last
convolutions and the residual shortcuts see the full-range signal. Users change the list with
``svdtrt quantize --exclude PATTERN ...`` (which replaces it).
"""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import InputError

#: Components whose calls ``svdtrt calibrate`` records: the default loop's UNet and VAE decoder.
RECORDED_COMPONENTS = ("unet", "vae_decoder")

#: Components that are quantized, in this order: the UNet graphs run once per denoising step and
#: the VAE decoder on every frame, so they hold almost all of a clip's time. The block-caching
#: graphs (``unet_full``, ``unet_shallow``) are quantized where the bundle has them, after
#: ``unet``, whose quantized weights file they then read (docs/quantization.md, "Block-caching
#: graphs"). The CLIP image encoder and the VAE encoder run once per clip; their int8/fp8 graph
#: entries point at the fp32 graphs.
QUANTIZED_COMPONENTS = ("unet", "unet_full", "unet_shallow", "vae_decoder")

#: The recorded component (:data:`RECORDED_COMPONENTS`) whose calls calibrate and measure each
#: quantized component. The block-caching graphs take the UNet's inputs; ``unet_shallow`` also
#: takes a ``deep_feature``, derived per call by the fp32 ``unet_full`` graph
#: (:mod:`svdtrt.calibration.derived`).
CALIBRATED_FROM = {"unet": "unet", "unet_full": "unet", "unet_shallow": "unet", "vae_decoder": "vae_decoder"}

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
