"""Component specs: the names, symbolic shapes and tolerances of the four SVD graphs.

Every stage (export, validation, shape profiles, calibration, engine build, runtime
binding, benchmarks) reads component I/O from here and nowhere else (docs/architecture.md,
"Components").

Shape symbols:
    B  batch, including the classifier-free-guidance doubling (2 for one clip)
    F  frames of the clip
    N  frames in one VAE decode chunk
    C  latent channels (``vae.config.latent_channels``)
    D  image-embedding width (``image_encoder.config.projection_dim``)
    S  CLIP input size (224: diffusers' SVD pipeline resizes to 224x224)
    H, W  image size in pixels; h, w  latent size (H / latent_scale, W / latent_scale)
    K  channels of the block-caching deep feature (``block_out_channels[d]``, or ``[d - 1]`` past layer 0;
       :attr:`ModelDims.deep_channels`)
    hk, wk  size of the deep feature (h / 2**(d - 1), w / 2**(d - 1); :mod:`svdtrt.models.block_cache`)
A symbol may carry an integer factor (``2C``) and a plain integer is a fixed size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from .errors import InputError

#: Symbols that stay dynamic in the exported graphs.
DYNAMIC_SYMBOLS = frozenset({"B", "F", "N", "H", "W", "h", "w", "hk", "wk"})

#: The ONNX opset graphs are exported at unless ``svdtrt export --opset`` says otherwise (17: the
#: first with LayerNormalization, which TensorRT 10.x imports as one normalization layer).
DEFAULT_OPSET = 17

#: The block-caching depth unless ``svdtrt export --cache-depth`` says otherwise: the deep feature
#: enters the last up block (at ``--cache-layer`` 0, its input; :mod:`svdtrt.models.block_cache`).
DEFAULT_CACHE_DEPTH = 1

#: diffusers' SVD pipeline resizes the CLIP input to this size (``_resize_with_antialiasing(image, (224, 224))``).
CLIP_INPUT_SIZE = 224


@dataclass(frozen=True)
class TensorSpec:
    """One named graph input or output: ``dims`` are shape symbols, ``dtype`` a numpy dtype name."""

    name: str
    dims: tuple[str, ...]
    dtype: str = "float32"

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape for ``sizes`` (a symbol -> int mapping, see :func:`ModelDims.sizes`).

        Raises:
            KeyError: a symbol of this tensor is missing from ``sizes``.
        """
        return tuple(_resolve(d, sizes) for d in self.dims)

    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbol name for the axes left dynamic in the graph."""
        return {i: d for i, d in enumerate(self.dims) if d in DYNAMIC_SYMBOLS}


@dataclass(frozen=True)
class Fp16Tolerance:
    """What an fp16 graph must reach against the fp32 PyTorch module, per output, on ONNX
    Runtime's CPU provider: cosine similarity and PSNR in dB over the reference's peak-to-peak
    range (see :func:`svdtrt.export.validation.validate_graph`).

    The defaults come from measurement (docs/export.md): every component of the tiny, small and
    svd-xt presets measured at least cosine 0.99996 and 56 dB (the small UNet; svd-xt's worst is
    73.7 dB); the limits leave a margin for other weights while still failing on an fp16
    overflow (inf/NaN) or a wrong conversion.
    """

    min_cosine: float = 0.999
    min_psnr_db: float = 35.0


@dataclass(frozen=True)
class ComponentSpec:
    """A component's graph interface and its fp32 validation tolerances.

    ``max_rel_error`` bounds ``max|onnx - torch| / max(1, max|torch|)`` and ``min_cosine``
    the cosine similarity of each output, both measured on ONNX Runtime's CPU provider;
    ``fp16`` holds the fp16 graph's tolerances and ``fp16_fp32_ops`` the op types its fp16
    conversion keeps in float32 (measured need only; see :mod:`svdtrt.graphs.fp16`).
    ``fp16_upcast`` names a ``(module, config key)`` that, when true in the model's configs,
    keeps the whole component in fp32 under the fp16 precision (:func:`runs_fp32_in_fp16`).
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_rel_error: float = 1e-4
    min_cosine: float = 0.99999
    #: (min, opt, max) of B: 2 for the UNet's classifier-free-guidance batch, 1 without guidance.
    batch: tuple[int, int, int] = (1, 1, 1)
    fp16: Fp16Tolerance = Fp16Tolerance()
    fp16_fp32_ops: tuple[str, ...] = ()
    fp16_upcast: tuple[str, str] | None = None
    #: Another component whose weights this graph's weights are a copy of: the export points the
    #: graph at that component's external-data file where every tensor matches (docs/architecture.md,
    #: "Block caching").
    shares_weights_with: str | None = None

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def split_dim(dim: str) -> tuple[int, str | None]:
    """A dimension of the shape notation above as (factor, symbol): ``"2C"`` -> (2, "C"),
    ``"B"`` -> (1, "B"), ``"3"`` -> (3, None)."""
    if dim.isdigit():
        return int(dim), None
    factor, symbol = re.fullmatch(r"(\d*)([A-Za-z]+)", dim).groups()
    return int(factor or 1), symbol


def _resolve(dim: str, sizes: Mapping[str, int]) -> int:
    factor, symbol = split_dim(dim)
    return factor if symbol is None else factor * sizes[symbol]


IMAGE_ENCODER = ComponentSpec(
    "image_encoder",
    inputs=(TensorSpec("pixel_values", ("B", "3", "S", "S")),),
    outputs=(TensorSpec("image_embeds", ("B", "D")),),
)
VAE_ENCODER = ComponentSpec(
    "vae_encoder",
    inputs=(TensorSpec("image", ("B", "3", "H", "W")),),
    outputs=(TensorSpec("latents", ("B", "C", "h", "w")),),
    # diffusers' StableVideoDiffusionPipeline encodes in fp32 when the VAE config sets
    # force_upcast (SVD's does), also in an fp16 pipeline; it decodes in fp16.
    fp16_upcast=("vae", "force_upcast"),
)
UNET = ComponentSpec(
    "unet",
    inputs=(
        TensorSpec("sample", ("B", "F", "2C", "h", "w")),
        TensorSpec("timestep", ("B",)),
        TensorSpec("encoder_hidden_states", ("B", "1", "D")),
        TensorSpec("added_time_ids", ("B", "3")),
    ),
    outputs=(TensorSpec("noise_pred", ("B", "F", "C", "h", "w")),),
    batch=(1, 2, 2),
)
#: Block caching (:mod:`svdtrt.models.block_cache`): the full UNet that also returns the deep feature
#: entering layer j of up block n - d, and the shallow UNet that runs only the shallow part on it.
DEEP_FEATURE = TensorSpec("deep_feature", ("B", "F", "K", "hk", "wk"))
UNET_FULL = ComponentSpec(
    "unet_full", inputs=UNET.inputs, outputs=(*UNET.outputs, DEEP_FEATURE), batch=UNET.batch,
    shares_weights_with="unet",
)
UNET_SHALLOW = ComponentSpec(
    "unet_shallow", inputs=(*UNET.inputs, DEEP_FEATURE), outputs=UNET.outputs, batch=UNET.batch,
    shares_weights_with="unet",
)
VAE_DECODER = ComponentSpec(
    "vae_decoder",
    inputs=(TensorSpec("latents", ("N", "C", "h", "w")),),
    outputs=(TensorSpec("frames", ("N", "3", "H", "W")),),
)

#: The components: the four of SVD in the order the sampling loop first calls them, then the two
#: block-caching graphs (called instead of ``unet`` when ``--cache-interval`` is above 1).
COMPONENTS: dict[str, ComponentSpec] = {
    s.name: s for s in (IMAGE_ENCODER, VAE_ENCODER, UNET, VAE_DECODER, UNET_FULL, UNET_SHALLOW)
}
#: The block-caching graphs: optional (a bundle may lack them; only ``--cache-interval`` above 1
#: runs them), and exported with the UNet, whose weights they share.
CACHING_COMPONENTS: tuple[str, ...] = tuple(n for n, s in COMPONENTS.items() if s.shares_weights_with)


def with_caching_graphs(components: list[str]) -> list[str]:
    """``components`` and, when ``unet`` is among them, the block-caching graphs: they read the
    UNet's weights file, so export and convert make them with it."""
    return [*components, *(n for n in CACHING_COMPONENTS if "unet" in components and n not in components)]


#: SVD's four components: what every bundle has and every clip runs.
SVD_COMPONENTS: tuple[str, ...] = tuple(n for n in COMPONENTS if n not in CACHING_COMPONENTS)
#: The components that are UNet calls of the denoising loop (what ``unet_calls`` counts).
UNET_COMPONENTS = ("unet", "unet_full", "unet_shallow")


def component(name: str) -> ComponentSpec:
    """The spec called ``name``.

    Raises:
        InputError: ``name`` is not one of :data:`COMPONENTS`.
    """
    try:
        return COMPONENTS[name]
    except KeyError:
        raise InputError(f"unknown component '{name}': choose from {', '.join(COMPONENTS)}") from None


def up_block_layers(unet_config: Mapping, depth: int) -> int:
    """Layers (resnets, each with its attention if any) of up block n - ``depth`` of a UNet: diffusers
    gives up block i ``reversed(layers_per_block)[i] + 1`` layers
    (``UNetSpatioTemporalConditionModel.__init__``), the extra one reading the level's input skip."""
    per_block = unet_config["layers_per_block"]
    if not isinstance(per_block, int):
        per_block = per_block[depth - 1]
    return per_block + 1


@dataclass(frozen=True)
class ModelDims:
    """The sizes a model's configs fix, read from them (nothing assumes the 576x1024 release).

    Attributes:
        latent_channels: C, ``vae.config.latent_channels`` (4 for SVD).
        embed_dim: D, ``image_encoder.config.projection_dim`` (1024 for SVD).
        latent_scale: pixels per latent cell, ``2 ** (len(vae.config.block_out_channels) - 1)``
            as diffusers' pipeline computes ``vae_scale_factor`` (8 for SVD).
        unet_downsamples: ``len(unet.config.block_out_channels) - 1``; the latent size must be a
            multiple of ``2 ** unet_downsamples`` for the skip connections to line up.
        scaling_factor: ``vae.config.scaling_factor`` (0.18215 for SVD).
        default_frames: ``unet.config.num_frames`` (14 for SVD, 25 for SVD-XT).
        cache_depth: the block-caching depth d the bundle's caching graphs were exported at
            (``svdtrt export --cache-depth``, 1 .. ``unet_downsamples``).
        cache_layer: the block-caching layer j (``svdtrt export --cache-layer``): the deep
            feature enters layer j of up block n - d (0 .. :func:`up_block_layers` - 1).
        deep_channels: K, channels of the deep feature: ``unet.config.block_out_channels[d]``
            at j = 0 (the input of up block n - d), ``block_out_channels[d - 1]`` at j > 0 (the
            output of one of its layers).
    """

    latent_channels: int
    embed_dim: int
    latent_scale: int
    unet_downsamples: int
    scaling_factor: float
    default_frames: int
    cache_depth: int = DEFAULT_CACHE_DEPTH
    cache_layer: int = 0
    deep_channels: int = 0

    @classmethod
    def from_configs(cls, unet: Mapping, vae: Mapping, image_encoder: Mapping,
                     cache_depth: int = DEFAULT_CACHE_DEPTH, cache_layer: int = 0) -> "ModelDims":
        """Read the sizes from the three config dicts (as saved in ``config.json`` files).

        Raises:
            InputError: ``cache_depth`` is not 1 .. ``len(unet["block_out_channels"]) - 1``, or
                ``cache_layer`` not 0 .. ``up_block_layers(unet, cache_depth) - 1``.
        """
        levels = len(unet["block_out_channels"])
        if not 1 <= cache_depth <= levels - 1:
            raise InputError(f"cache depth must be 1 to {levels - 1} for this UNet ({levels} levels), got {cache_depth}")
        layers = up_block_layers(unet, cache_depth)
        if not 0 <= cache_layer < layers:
            raise InputError(f"cache layer must be 0 to {layers - 1} at cache depth {cache_depth} for this UNet "
                             f"({layers} layers in its up block), got {cache_layer}")
        return cls(
            latent_channels=int(vae["latent_channels"]),
            embed_dim=int(image_encoder["projection_dim"]),
            latent_scale=2 ** (len(vae["block_out_channels"]) - 1),
            unet_downsamples=len(unet["block_out_channels"]) - 1,
            scaling_factor=float(vae["scaling_factor"]),
            default_frames=int(unet["num_frames"]),
            cache_depth=cache_depth,
            cache_layer=cache_layer,
            deep_channels=int(unet["block_out_channels"][cache_depth if cache_layer == 0 else cache_depth - 1]),
        )

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this many pixels."""
        return self.latent_scale * 2**self.unet_downsamples

    def check_size(self, frames: int, height: int, width: int) -> None:
        """Raise :class:`InputError` unless the model can take this clip size."""
        if frames < 1:
            raise InputError(f"frames must be at least 1, got {frames}")
        m = self.pixel_multiple
        if height < m or width < m or height % m or width % m:
            raise InputError(
                f"height and width must be positive multiples of {m} pixels for this model "
                f"(latent scale {self.latent_scale} x UNet downsampling {2**self.unet_downsamples}), "
                f"got {height}x{width}"
            )

    def sizes(self, batch: int, frames: int, height: int, width: int, chunk: int | None = None) -> dict[str, int]:
        """Symbol -> size for one clip shape; ``chunk`` (N) defaults to ``frames``."""
        h, w, down = height // self.latent_scale, width // self.latent_scale, 2 ** (self.cache_depth - 1)
        return {
            "B": batch, "F": frames, "N": chunk or frames, "C": self.latent_channels,
            "D": self.embed_dim, "S": CLIP_INPUT_SIZE, "H": height, "W": width,
            "h": h, "w": w, "K": self.deep_channels, "hk": h // down, "wk": w // down,
        }


#: (min, opt, max) of one size; a static size has min == opt == max.
Range = tuple[int, int, int]


#: Validation runs every graph on ONNX Runtime's CPU provider, whose attention materialises
#: [B * F * heads, h * w, h * w] scores (85 GB at 576x1024); above this many latent cells
#: (F * h * w, 4 frames of 16x16) a graph is traced and validated at :func:`validation_shape`.
VALIDATION_MAX_CELLS = 4 * 16 * 16


def validation_shape(dims: ModelDims, frames: Range, height: Range, width: Range) -> tuple[int, int, int]:
    """(frames, height, width) at which graphs are traced and validated: the optimal shape, or
    when that exceeds :data:`VALIDATION_MAX_CELLS`, 2 frames at the smallest size the model takes
    (e.g. 64x64 for SVD). The traced graph keeps its dynamic axes either way."""
    f, h, w = frames[1], height[1], width[1]
    if f * (h // dims.latent_scale) * (w // dims.latent_scale) <= VALIDATION_MAX_CELLS:
        return f, h, w
    return min(f, 2), dims.pixel_multiple, dims.pixel_multiple


def check_ranges(dims: ModelDims, frames: Range, height: Range, width: Range) -> None:
    """Raise :class:`InputError` unless each range is min <= opt <= max and every size fits the model."""
    for name, r in (("frames", frames), ("height", height), ("width", width)):
        if len(r) != 3 or not r[0] <= r[1] <= r[2]:
            raise InputError(f"{name} range {':'.join(map(str, r))} is not MIN:OPT:MAX with MIN <= OPT <= MAX")
    for i in range(3):
        dims.check_size(frames[i], height[i], width[i])


def profile_shapes(spec: ComponentSpec, dims: ModelDims, frames: Range, height: Range,
                   width: Range) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shape of every input of ``spec``: what a TensorRT optimization profile needs.

    B follows ``spec.batch``; a VAE decode chunk N runs from 1 frame to the clip's frames.
    Returns ``{input_name: {"min": [...], "opt": [...], "max": [...]}}``.
    """
    profile = {}
    for t in spec.inputs:
        profile[t.name] = {
            key: list(t.shape(dims.sizes(spec.batch[i], frames[i], height[i], width[i],
                                         chunk=1 if key == "min" else frames[i])))
            for i, key in enumerate(("min", "opt", "max"))
        }
    return profile


def output_shapes(spec: ComponentSpec, dims: ModelDims,
                  input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shape of every output of ``spec`` for one call with ``input_shapes`` (``{input: shape}``):
    the symbols the inputs bind (``sample`` [B, F, 2C, h, w] binds B, F, C, h, w), the rest from
    ``dims`` (H = h x latent scale, hk = h / 2**(d - 1), D, K). What a caller that allocates a
    graph's outputs before running it needs (:mod:`svdtrt.runtime.backends.onnxrt`).

    Raises:
        KeyError: an input of ``spec`` is missing from ``input_shapes``.
    """
    bound: dict[str, int] = {}
    for t in spec.inputs:
        for dim, size in zip(t.dims, input_shapes[t.name]):
            factor, symbol = split_dim(dim)
            if symbol is not None:
                bound[symbol] = size // factor
    scale = dims.latent_scale
    height = bound.get("H", bound.get("h", 1) * scale)
    width = bound.get("W", bound.get("w", 1) * scale)
    frames = bound.get("F", bound.get("N", 1))
    sizes = {**dims.sizes(bound.get("B", 1), frames, height, width, bound.get("N")), **bound}
    return {t.name: t.shape(sizes) for t in spec.outputs}


def runs_fp32_in_fp16(spec: ComponentSpec, configs: Mapping[str, Mapping]) -> bool:
    """Whether the fp16 precision keeps component ``spec`` in fp32 for this model, as diffusers'
    fp16 pipeline does: true when the spec's ``fp16_upcast`` config flag is set in ``configs``
    (``{module: config}``, a manifest's ``configs`` or :meth:`SvdModel.configs`)."""
    if spec.fp16_upcast is None:
        return False
    module, key = spec.fp16_upcast
    return bool(configs.get(module, {}).get(key, False))
