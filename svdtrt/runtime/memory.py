"""Host memory of one clip, estimated before sampling: a run that cannot fit fails in seconds with
the numbers, instead of being killed by the kernel (or swapping) after minutes of work.

The estimate is a floor, not a forecast: it counts only memory a run certainly holds at once on
the host, so a refused run would not have fit, while an accepted one may still need more (the
allocators' slack, the libraries' own buffers and ONNX Runtime's arena are not counted). Its terms,
in float32 (4 bytes per value):

- weights: the bytes of the graph files the backend loads (``manifest.files``), the source model's
  (its fp32 graphs' bytes) for ``torch``, plus the source model for a run that also makes
  diffusers' reference (``check``, ``bench``);
- clip tensors: the latents and the UNet's inputs and outputs, B x F x 2C x h x w each
  (:data:`LATENT_COPIES`), and the decoded frames, F x 3 x H x W, held in :data:`FRAME_COPIES`
  copies at the end (the decoder's output, the float copy diffusers' post-processing takes, its
  result), per clip the command keeps;
- activations, only where the backend computes on the host (``onnxruntime`` on the CPU, ``torch``
  on the CPU), the largest of one stage at a time (stages run one after the other):
  - the UNet's first-level feature map (B x F x c0 x h x w, c0 = ``block_out_channels[0]``),
    x2 for a layer's input and output;
  - ONNX Runtime only: the attention scores of the first UNet level with attention, which its CPU
    provider materialises as one tensor (MatMul then Softmax in the exported graph; see
    :data:`svdtrt.specs.VALIDATION_MAX_CELLS`): spatial B x F x heads x (h w)^2 and temporal
    B x h w x heads x F^2, one tensor (the Softmax output doubles it; not counted). PyTorch's
    CPU attention is fused (no scores tensor);
  - the VAE decoder's full-resolution feature map, N x c x H x W for a decode chunk of N frames
    (c = the VAE's ``block_out_channels[0]``), x2 for a layer's input and output.

GPU backends keep activations in device memory, which this does not estimate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .backends import on_gpu

#: Bytes per value: every tensor on the host is float32.
FLOAT_BYTES = 4
#: Copies of the decoded frames held at the end of a clip (see the module doc).
FRAME_COPIES = 3
#: Latent-sized tensors alive during a denoising step: the UNet's input (2C channels, counted
#: twice), its output, the latents, the image latents and the guided prediction.
LATENT_COPIES = 6


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one run holds at least at once on the host, by term (see the module doc)."""

    weights: int
    clip: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.clip + self.activations

    def describe(self) -> str:
        return (f"{_gib(self.total)} (weights {_gib(self.weights)}, clip tensors {_gib(self.clip)}, "
                f"activations {_gib(self.activations)})")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _graph_bytes(bundle, precision: str) -> int:
    """Bytes of the graph files (graph and external weights) of ``precision`` the bundle has."""
    files, names = bundle.manifest.files, set()
    for entry in bundle.manifest.components.values():
        graph = entry.graphs.get(precision)
        if graph:
            names.update(n for n in (graph.file, graph.data) if n)
    return sum(files[n].bytes for n in names if n in files)


def _heads(unet: dict, level: int) -> int:
    heads = unet.get("num_attention_heads", 1)
    return int(heads[level] if isinstance(heads, (list, tuple)) else heads)


def _activation_bytes(bundle, settings, backend: str) -> int:
    """The largest host activation of one stage (see the module doc), for ``backend``."""
    configs, dims, s = bundle.manifest.configs, bundle.dims, settings
    unet, vae = configs.get("unet", {}), configs.get("vae", {})
    guided = s.max_guidance_scale > 1
    b = 2 if guided else 1
    h, w = s.height // dims.latent_scale, s.width // dims.latent_scale
    unet_channels = (unet.get("block_out_channels") or [0])[0]
    stages = [2 * b * s.frames * unet_channels * h * w]
    if backend == "onnxruntime":
        for level, kind in enumerate(unet.get("down_block_types", [])):
            if "CrossAttn" in kind:
                cells, heads = (h >> level) * (w >> level), _heads(unet, level)
                stages.append(max(b * s.frames * heads * cells**2, b * cells * heads * s.frames**2))
                break
    chunk = min(s.decode_chunk_size or s.frames, s.frames)
    stages.append(2 * chunk * (vae.get("block_out_channels") or [0])[0] * s.height * s.width)
    return max(stages) * FLOAT_BYTES


def estimate_host_memory(bundle, settings, backend: str, precision: str = "fp32", device: str = "cpu",
                         reference: bool = False, clips: int = 1) -> MemoryEstimate:
    """The floor of the host memory one run needs (see the module doc).

    Args:
        bundle: the opened bundle (its manifest's file sizes and module configs are read).
        settings: the clip's :class:`svdtrt.runtime.pipeline.SamplingSettings`.
        backend: a backend name (:data:`svdtrt.runtime.backends.BACKENDS`); ``onnxruntime-*``
            and ``tensorrt`` compute on the GPU.
        precision: the graphs (or engines) it runs.
        device: where ``torch`` runs.
        reference: the run also makes diffusers' reference clip with the source model on the CPU
            (``check``, ``bench``).
        clips: clips held at once (``check`` keeps the tested, the PyTorch and diffusers' clips).
    """
    s, dims = settings, bundle.dims
    on_host = not on_gpu(backend, device)
    model_bytes = _graph_bytes(bundle, "fp32")  # the source model's fp32 weights
    weights = model_bytes if backend == "torch" else _graph_bytes(bundle, precision)
    if reference and backend != "torch":
        weights += model_bytes
    b = 2 if s.max_guidance_scale > 1 else 1
    latents = LATENT_COPIES * b * s.frames * dims.latent_channels * (s.height // dims.latent_scale) * (
        s.width // dims.latent_scale)
    frames = FRAME_COPIES * s.frames * 3 * s.height * s.width
    clip = clips * (latents + frames) * FLOAT_BYTES
    activations = _activation_bytes(bundle, s, backend) if on_host else 0
    if reference:  # diffusers' pipeline runs PyTorch on the CPU
        activations = max(activations, _activation_bytes(bundle, s, "torch"))
    return MemoryEstimate(weights=weights, clip=clip, activations=activations)


def available_host_memory() -> int | None:
    """Bytes this process can still allocate on the host, or None where unknown: Linux's
    ``MemAvailable`` (``/proc/meminfo``; else free physical pages from ``os.sysconf``), lowered
    to what a cgroup v2 or v1 memory limit leaves."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            left = int(Path(limit).read_text()) - int(Path(usage).read_text())
        except (OSError, ValueError):  # no such cgroup, or "max" (no limit)
            continue
        available = min(available, max(left, 0))
    return available


def check_host_memory(estimate: MemoryEstimate, what: str = "this clip", available: int | None = None) -> None:
    """Raise :class:`InputError` when ``estimate`` exceeds the available host memory (``available``
    bytes, default :func:`available_host_memory`); nothing where that is unknown."""
    if available is None:
        available = available_host_memory()
    if available is None or estimate.total <= available:
        return
    raise InputError(f"{what} needs at least {estimate.describe()} of host memory, but {_gib(available)} is "
                     "available; use fewer --frames, a smaller --height/--width, a --decode-chunk-size, or a "
                     "GPU backend")
