"""The quantization recipe's components: which calls ``svdtrt calibrate`` records, which
components ``svdtrt quantize`` quantizes, and which recorded calls calibrate each. What is done to
each graph (the op types that get Q/DQ, the node-name exclusions) is graph-level and lives in
:mod:`svdtrt.graphs.qdq`.
"""

from __future__ import annotations

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
