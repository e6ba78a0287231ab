"""Image pre-processing for the CLIP image encoder, exactly as diffusers' SVD pipeline does it.

diffusers keeps its anti-aliased resize private (``_resize_with_antialiasing`` in
``diffusers/pipelines/stable_video_diffusion/pipeline_stable_video_diffusion.py``), so this is
a local version of it; ``tests/runtime/test_preprocess.py`` pins it to diffusers' own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """A normalised odd-sized Gaussian kernel [size]."""
    # sigma as a tensor of the image's dtype, so the kernel rounds exactly as diffusers' does
    sigma = torch.tensor(sigma, dtype=dtype)
    x = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-x.pow(2.0) / (2 * sigma.pow(2.0)))
    return g / g.sum()


def _blur(image: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Depthwise 1-D convolution with an odd ``kernel`` along height (dim=-2) or width (dim=-1),
    reflect-padded so the size is kept."""
    c, k = image.shape[1], kernel.numel()
    pad = (k // 2, k // 2, 0, 0) if dim == -1 else (0, 0, k // 2, k // 2)
    shape = (1, 1, 1, k) if dim == -1 else (1, 1, k, 1)
    weight = kernel.reshape(shape).expand(c, 1, *shape[2:])
    return F.conv2d(F.pad(image, pad, mode="reflect"), weight, groups=c)


def resize_with_antialiasing(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Gaussian-blur then bicubic-resize ``image`` [B, C, H, W] to ``size`` (h, w).

    The blur's sigma per axis is ``max((factor - 1) / 2, 0.001)`` for the downscale factor,
    the kernel ``max(4 sigma, 3)`` rounded up to odd (scikit-image's anti-aliasing rule, as
    adopted by diffusers and kornia); bicubic with ``align_corners=True``.
    """
    h, w = image.shape[-2:]
    sigmas = (max((h / size[0] - 1.0) / 2.0, 0.001), max((w / size[1] - 1.0) / 2.0, 0.001))
    ks = [int(max(2.0 * 2 * s, 3)) for s in sigmas]
    ks = [k + 1 if k % 2 == 0 else k for k in ks]
    image = _blur(image, _gaussian_kernel(ks[1], sigmas[1], image.dtype), dim=-1)
    image = _blur(image, _gaussian_kernel(ks[0], sigmas[0], image.dtype), dim=-2)
    return F.interpolate(image, size=size, mode="bicubic", align_corners=True)
