"""The model configs a bundle carries (the manifest's ``configs``), checked as far as svdtrt and the
diffusers and transformers classes it builds from them read them (docs/architecture.md, "The
manifest").

The runtime builds its scheduler from ``configs["scheduler"]`` (:mod:`svdtrt.runtime.schedulers`),
CLIP's normalisation from ``configs["feature_extractor"]`` (``CLIPImageProcessor``), and the block
caching split and FLOP counts from ``configs["unet"]``; ``dims`` are derived from the UNet, VAE
and image encoder configs (:meth:`svdtrt.specs.ModelDims.from_configs`). A damaged value would
surface as a ``TypeError`` deep in diffusers; here it is refused when the manifest is read,
naming the field. Each schema lists the fields read, with their types and ranges taken from the
classes' signatures (diffusers 0.42: ``EulerDiscreteScheduler``, ``EDMEulerScheduler``,
``EDMDPMSolverMultistepScheduler``, ``EulerAncestralDiscreteScheduler``; transformers'
``CLIPImageProcessor``); other keys (``_class_name``, ``_diffusers_version``, ...) are left as
they are.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import InputError
from ..specs import ModelDims

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFinite = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Config(BaseModel):
    model_config = ConfigDict(extra="allow")


class SchedulerConfig(_Config):
    """The scheduler fields the four schedulers of ``--scheduler`` read."""

    num_train_timesteps: Positive = 1000
    beta_start: NonNegativeFinite = 0.0001
    beta_end: NonNegativeFinite = 0.02
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    trained_betas: list[NonNegativeFinite] | None = None
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    interpolation_type: Literal["linear", "log_linear"] = "linear"
    use_karras_sigmas: bool | None = False
    use_exponential_sigmas: bool | None = False
    use_beta_sigmas: bool | None = False
    sigma_min: PositiveFinite | None = None
    sigma_max: PositiveFinite | None = None
    sigma_data: PositiveFinite | None = None
    timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace"
    timestep_type: Literal["discrete", "continuous"] = "discrete"
    steps_offset: NonNegative = 0
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: Literal["zero", "sigma_min"] = "zero"


class FeatureExtractorConfig(_Config):
    """CLIP's preprocessing: the loop normalises with ``image_mean`` and ``image_std`` (three
    channels); the rest is read when ``CLIPImageProcessor`` is built."""

    image_mean: Annotated[list[Finite], Field(min_length=3, max_length=3)]
    image_std: Annotated[list[PositiveFinite], Field(min_length=3, max_length=3)]
    size: dict[str, Positive] | Positive | None = None
    crop_size: dict[str, Positive] | Positive | None = None
    resample: Annotated[int, Field(ge=0, le=5)] | None = None
    rescale_factor: Finite | None = None
    do_convert_rgb: bool | None = None


class UNetConfig(_Config):
    block_out_channels: Annotated[list[Positive], Field(min_length=2)]
    layers_per_block: Positive | list[Positive]
    num_frames: Positive

    @model_validator(mode="after")
    def _one_per_level(self):
        if isinstance(self.layers_per_block, list) and len(self.layers_per_block) != len(self.block_out_channels):
            raise ValueError("layers_per_block needs one entry per block_out_channels entry")
        return self


class VaeConfig(_Config):
    block_out_channels: Annotated[list[Positive], Field(min_length=1)]
    latent_channels: Positive
    scaling_factor: PositiveFinite


class ImageEncoderConfig(_Config):
    projection_dim: Positive


#: Every config a bundle carries, by its key in ``configs``.
SCHEMAS: dict[str, type[_Config]] = {"unet": UNetConfig, "vae": VaeConfig, "image_encoder": ImageEncoderConfig,
                                     "scheduler": SchedulerConfig, "feature_extractor": FeatureExtractorConfig}


def configs_problem(configs: dict, dims: dict) -> tuple[str, str] | None:
    """``(field, what is wrong)`` for the first config field svdtrt cannot use, or for a ``dims``
    value the configs do not give (the block-caching split out of the UNet's range included), or
    None when they are sound.

    Args:
        configs: the manifest's ``configs``.
        dims: the manifest's ``dims`` as a dict (:class:`svdtrt.specs.ModelDims`' fields).
    """
    for key, schema in SCHEMAS.items():
        if not isinstance(configs.get(key), dict):
            return f"configs.{key}", "missing" if key not in configs else "not an object"
        try:
            schema.model_validate(configs[key], strict=True)
        except ValidationError as e:
            err = e.errors()[0]
            return ".".join(["configs", key, *map(str, err["loc"])]), err["msg"]
    try:
        expected = ModelDims.from_configs(configs["unet"], configs["vae"], configs["image_encoder"],
                                          dims["cache_depth"], dims["cache_layer"])
    except InputError as e:
        return ("dims.cache_depth" if "depth must" in str(e) else "dims.cache_layer"), str(e)
    for name, value in vars(expected).items():
        # deep_channels is 0 in bundles exported before block caching (docs/architecture.md)
        if dims[name] != value and not (name == "deep_channels" and dims[name] == 0):
            return f"dims.{name}", f"is {dims[name]}, but the model's configs give {value}"
    return None
