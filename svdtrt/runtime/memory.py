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

Device memory is estimated the same way, as a floor, per stage of the clip (CLIP, VAE encode,
denoise, VAE decode; :func:`estimate_device_memory`), and a stage needs at least:

- weights: the bytes of what the backend holds on the GPU at that stage. ``tensorrt`` loads an
  engine when its stage first runs and keeps it (only the stage's own engines with
  ``--one-engine-at-a-time``): the engine files' bytes (the graphs' where an engine is not built
  yet); the ``onnxruntime-*`` backends open every session before sampling: the graph files'
  bytes; ``torch`` on CUDA moves every module to the GPU at once: the fp32 graphs' bytes at its
  dtype. A weights file that several graphs read is counted once;
- the largest activation block: the activations of one stage (the pairs of feature maps above,
  without attention scores, which the GPU's fused attention does not materialise; the CLIP
  encoder's widest layer, 257 tokens x ``intermediate_size``) in the precision's float type
  (:attr:`svdtrt.precisions.Precision.float_dtype`). Allocators keep what they grew to, and the
  TensorRT backend's one activation block is sized to the largest engine loaded, so a stage
  holds the largest block of the stages so far (its own only with ``--one-engine-at-a-time``,
  which frees the block between stages);
- the loop's own tensors: the latent-sized tensors of the denoising step from the denoising loop
  on (:data:`LATENT_COPIES`), and at decoding the decoded frames in :data:`DEVICE_FRAME_COPIES`
  copies, float32.
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
#: Copies of the decoded frames on the GPU while decoding: the decoder's outputs per chunk and
#: their concatenation (``torch.cat`` holds both).
DEVICE_FRAME_COPIES = 2
#: The stages of a clip, in the order the loop runs them.
STAGES = ("CLIP", "VAE encode", "denoise", "VAE decode")


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


def _size(n: float) -> str:
    """Bytes as GiB, or as MiB below 1 GiB (a small model's clip)."""
    return _gib(n) if n >= 2**30 else f"{n / 2**20:.1f} MiB"


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


def _stage_activations(bundle, settings) -> dict[str, int]:
    """Values (not bytes) of the largest pair of feature maps of each stage of :data:`STAGES` (see
    the module doc): the CLIP encoder's MLP, the VAE's full-resolution maps (the encoder's for one
    image, the decoder's for a chunk) and the UNet's first level."""
    configs, dims, s = bundle.manifest.configs, bundle.dims, settings
    unet, vae, clip = configs.get("unet", {}), configs.get("vae", {}), configs.get("image_encoder", {})
    b = 2 if s.max_guidance_scale > 1 else 1
    h, w = s.height // dims.latent_scale, s.width // dims.latent_scale
    vae_channels = (vae.get("block_out_channels") or [0])[0]
    tokens = (clip.get("image_size", 0) // clip.get("patch_size", 1)) ** 2 + 1
    chunk = min(s.decode_chunk_size or s.frames, s.frames)
    return {"CLIP": 2 * tokens * clip.get("intermediate_size", 0),
            "VAE encode": 2 * vae_channels * s.height * s.width,
            "denoise": 2 * b * s.frames * (unet.get("block_out_channels") or [0])[0] * h * w,
            "VAE decode": 2 * chunk * vae_channels * s.height * s.width}


def _activation_bytes(bundle, settings, backend: str) -> int:
    """The largest host activation of one stage (see the module doc), for ``backend``."""
    unet, dims, s = bundle.manifest.configs.get("unet", {}), bundle.dims, settings
    stages = _stage_activations(bundle, settings)
    largest = [stages["denoise"], stages["VAE decode"]]
    if backend == "onnxruntime":
        b = 2 if s.max_guidance_scale > 1 else 1
        h, w = s.height // dims.latent_scale, s.width // dims.latent_scale
        for level, kind in enumerate(unet.get("down_block_types", [])):
            if "CrossAttn" in kind:
                cells, heads = (h >> level) * (w >> level), _heads(unet, level)
                largest.append(max(b * s.frames * heads * cells**2, b * cells * heads * s.frames**2))
                break
    return max(largest) * FLOAT_BYTES


def _loop_values(bundle, settings) -> tuple[int, int]:
    """Values (not bytes) of the loop's latent-sized tensors (:data:`LATENT_COPIES` of them) and
    of one copy of the decoded frames."""
    s, dims = settings, bundle.dims
    b = 2 if s.max_guidance_scale > 1 else 1
    latents = LATENT_COPIES * b * s.frames * dims.latent_channels * (s.height // dims.latent_scale) * (
        s.width // dims.latent_scale)
    return latents, s.frames * 3 * s.height * s.width


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
    s = settings
    on_host = not on_gpu(backend, device)
    model_bytes = _graph_bytes(bundle, "fp32")  # the source model's fp32 weights
    weights = model_bytes if backend == "torch" else _graph_bytes(bundle, precision)
    if reference and backend != "torch":
        weights += model_bytes
    latents, frames = _loop_values(bundle, s)
    clip = clips * (latents + FRAME_COPIES * frames) * FLOAT_BYTES
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


@dataclass(frozen=True)
class StageMemory:
    """Bytes one stage of a clip holds at least at once in device memory, by term (see the module
    doc); ``stage`` is one of :data:`STAGES`."""

    stage: str
    weights: int
    activations: int
    loop: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.loop


@dataclass(frozen=True)
class DeviceMemoryEstimate:
    """The device memory a clip needs at least, per stage in the order they run."""

    stages: tuple[StageMemory, ...]

    @property
    def peak(self) -> StageMemory:
        """The stage that needs the most."""
        return max(self.stages, key=lambda stage: stage.total)

    def describe(self) -> str:
        """``"at least 9.1 GiB, in VAE decode (weights ..., activations ..., loop tensors ...);
        by stage: CLIP 1.2 GiB, ..."``."""
        return f"{self.describe_peak()}; by stage: {self.describe_stages()}"

    def describe_peak(self) -> str:
        p = self.peak
        return (f"at least {_size(p.total)}, in {p.stage} (weights {_size(p.weights)}, activations "
                f"{_size(p.activations)}, loop tensors {_size(p.loop)})")

    def describe_stages(self) -> str:
        return ", ".join(f"{stage.stage} {_size(stage.total)}" for stage in self.stages)


def _stage_components(settings) -> dict[str, tuple[str, ...]]:
    """The components each of :data:`STAGES` calls (the UNet graphs as
    :func:`svdtrt.runtime.pipeline.unet_graph` picks them: ``unet_full`` first under block caching)."""
    unets = ("unet",) if settings.cache_interval == 1 else ("unet_full", "unet_shallow")[:min(settings.steps, 2)]
    return {"CLIP": ("image_encoder",), "VAE encode": ("vae_encoder",), "denoise": unets,
            "VAE decode": ("vae_decoder",)}


#: Bytes per weight relative to fp32, by a precision's dtype, for a graph the bundle does not have
#: (its fp32 graph's bytes scaled): int8 and fp8 weights take one byte.
WEIGHT_SCALE = {"float32": 1.0, "float16": 0.5, "int8": 0.25, "float8_e4m3fn": 0.25}


def _weight_files(bundle, component: str, backend: str, precision: str) -> dict[str, float]:
    """``{file: bytes}`` of what ``backend`` holds of ``component`` on the GPU: its engine file
    (``tensorrt``, where built: TensorRT copies an engine's weights to the device when it
    deserializes it), else its graph and weights files of ``precision``; where the bundle lacks
    that graph (and always for ``torch``, whose modules are the fp32 model's), the fp32 graph's
    bytes scaled by :data:`WEIGHT_SCALE`, unless the component runs in fp32 anyway."""
    from ..precisions import precision as lookup_precision
    from ..specs import COMPONENTS, runs_fp32_in_fp16

    m = bundle.manifest
    engine = m.engines.get(f"{component}.{precision}") if backend == "tensorrt" else None
    if engine is not None:
        return {engine.engine: m.files[engine.engine].bytes}
    graphs = m.components[component].graphs if component in m.components else {}
    graph, scale = (None if backend == "torch" else graphs.get(precision)), 1.0
    if graph is None:
        graph = graphs.get("fp32")
        if not runs_fp32_in_fp16(COMPONENTS[component], m.configs):
            scale = WEIGHT_SCALE[lookup_precision(precision).dtype]
    if graph is None:
        return {}
    return {n: m.files[n].bytes * scale for n in (graph.file, graph.data) if n and n in m.files}


def estimate_device_memory(bundle, settings, backend: str, precision: str = "fp32", device: str = "cpu",
                           one_engine_at_a_time: bool = False) -> DeviceMemoryEstimate | None:
    """The floor of the device memory one clip needs, per stage (see the module doc); None for a
    backend that computes on the host (:func:`svdtrt.runtime.backends.on_gpu`).

    Args:
        bundle: the opened bundle (its manifest's file sizes, engines and module configs are read).
        settings: the clip's :class:`svdtrt.runtime.settings.SamplingSettings`.
        backend, precision, device: what runs the clip (``device``: where ``torch`` runs).
        one_engine_at_a_time: ``tensorrt`` keeps only the stage's engines and activations.
    """
    from ..precisions import precision as lookup_precision

    if not on_gpu(backend, device):
        return None
    calls = _stage_components(settings)
    every = [c for components in calls.values() for c in components]
    value_bytes = 4 if lookup_precision(precision).float_dtype == "float32" else 2
    activations, latents, frames = _stage_activations(bundle, settings), *_loop_values(bundle, settings)
    stages, resident, block = [], {}, 0
    for stage in STAGES:
        if backend == "tensorrt" and one_engine_at_a_time:
            resident, block = {}, 0
        # tensorrt loads a stage's engines when it first runs; sessions and modules exist before sampling
        for component in calls[stage] if backend == "tensorrt" else every:
            resident.update(_weight_files(bundle, component, backend, precision))
        block = max(block, activations[stage] * value_bytes)
        loop = (latents if stage in ("denoise", "VAE decode") else 0) + (
            DEVICE_FRAME_COPIES * frames if stage == "VAE decode" else 0)
        stages.append(StageMemory(stage, int(sum(resident.values())), block, loop * FLOAT_BYTES))
    return DeviceMemoryEstimate(tuple(stages))


def available_device_memory() -> int | None:
    """Bytes free on the current CUDA device (``torch.cuda.mem_get_info``), or None where torch
    sees no GPU."""
    import torch

    return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None


def check_device_memory(estimate: DeviceMemoryEstimate, what: str = "this clip", budget: int | None = None) -> None:
    """Raise :class:`InputError` when ``estimate``'s peak exceeds ``budget`` bytes (``--device-memory``),
    or, without a budget, the GPU's free memory (:func:`available_device_memory`); nothing where
    neither is known.
    """
    limit = budget if budget is not None else available_device_memory()
    if limit is None or estimate.peak.total <= limit:
        return
    source = "the --device-memory budget" if budget is not None else "the GPU's free memory"
    raise InputError(f"{what} needs {estimate.describe_peak()} of device memory, over {source} of {_size(limit)} "
                     f"(by stage: {estimate.describe_stages()}); use a "
                     "--decode-chunk-size, fewer --frames, a smaller --height/--width, a lower --precision, or "
                     "--one-engine-at-a-time (tensorrt)")
