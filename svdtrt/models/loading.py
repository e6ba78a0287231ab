"""Loading an SVD model: a diffusers directory, a hub id, or a built-in preset.

A :class:`SvdModel` holds the three PyTorch modules and the two processing configs the
pipeline needs; every size svdtrt uses is read from their configs (:class:`ModelDims`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError, first_line
from ..progress import status
from ..specs import ModelDims
from .presets import PRESETS, SVD_FEATURE_EXTRACTOR, SVD_SCHEDULER

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: Subfolder and class of each module in a diffusers SVD directory.
_MODULES = {
    "image_encoder": "CLIPVisionModelWithProjection",
    "vae": "AutoencoderKLTemporalDecoder",
    "unet": "UNetSpatioTemporalConditionModel",
}


@dataclass
class SvdModel:
    """An SVD model in PyTorch (float32, eval mode, on the CPU).

    Attributes:
        image_encoder: ``transformers.CLIPVisionModelWithProjection``.
        vae: ``diffusers.AutoencoderKLTemporalDecoder``.
        unet: ``diffusers.UNetSpatioTemporalConditionModel``.
        scheduler_config: EulerDiscreteScheduler config dict.
        feature_extractor_config: CLIPImageProcessor config dict.
        source: where it came from: ``{"kind": "preset"|"directory"|"hub", "name": ...}``.
        default_shape: ``(frames, height, width)`` used when the user gives none.
    """

    image_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler_config: dict
    feature_extractor_config: dict
    source: dict
    default_shape: tuple[int, int, int]
    dims: ModelDims = field(init=False)

    def __post_init__(self):
        self.dims = ModelDims.from_configs(self.unet.config, self.vae.config, self.image_encoder.config.to_dict())

    def configs(self) -> dict[str, dict]:
        """The JSON-serialisable config of each module, keyed as in a diffusers directory."""
        return {
            "unet": _plain(self.unet.config),
            "vae": _plain(self.vae.config),
            "image_encoder": self.image_encoder.config.to_dict(),
            "scheduler": dict(self.scheduler_config),
            "feature_extractor": dict(self.feature_extractor_config),
        }

    def config_hashes(self) -> dict[str, str]:
        """sha256 of each module's canonical JSON config (records which model a bundle came from)."""
        return {k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()
                for k, v in self.configs().items()}

    def pipeline(self):
        """diffusers' own ``StableVideoDiffusionPipeline`` over these modules (the reference)."""
        from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
        from transformers import CLIPImageProcessor

        pipe = StableVideoDiffusionPipeline(
            vae=self.vae, image_encoder=self.image_encoder, unet=self.unet,
            scheduler=EulerDiscreteScheduler.from_config(self.scheduler_config),
            feature_extractor=CLIPImageProcessor(**self.feature_extractor_config),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _plain(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def load_model(model: str, variant: str | None = None, random_weights: bool = False,
               progress: bool = True) -> SvdModel:
    """Load ``model``: a preset name, a diffusers SVD directory, or a hub id, showing a ticking
    status line while it loads or builds (:func:`svdtrt.progress.status`; ``progress`` False
    shows none; the time is logged at INFO either way).

    Args:
        model: a preset (``tiny``, ``small``, ``svd``, ``svd-xt``; see :mod:`svdtrt.models.presets`), a directory with
            ``unet/``, ``vae/``, ``image_encoder/``, ``scheduler/``, ``feature_extractor/``,
            or a hub id ``owner/name`` (downloaded by diffusers; needs the network).
        variant: weights variant of a directory or hub model, e.g. ``"fp16"`` (loaded, then
            upcast to float32 like every module svdtrt exports).
        random_weights: says that seeded random weights are wanted; presets always have them,
            so it is accepted only for a preset (real models always load their weights).

    Raises:
        InputError: unknown preset, not a directory nor a hub id, a component missing or of
            another architecture, ``random_weights`` for a real model, ``variant`` for a preset.
    """
    if model in PRESETS:
        if variant:
            raise InputError(f"--variant applies to a model directory or hub id; preset '{model}' has "
                             "seeded random weights only")
        with status(f"building the {model} preset (seeded random weights)", progress, log):
            return build_preset(model)
    if random_weights:
        raise InputError(f"--random-weights applies to the presets ({', '.join(PRESETS)}); "
                         f"'{model}' is loaded with its own weights, so drop --random-weights")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"model '{model}' is a file; give a diffusers SVD directory, a hub id or a preset ({', '.join(PRESETS)})")
        with status(f"loading model '{model}'", progress, log):
            return _load_pretrained(str(path), {"kind": "directory", "name": str(path.resolve())}, variant)
    if _HUB_ID.match(model):
        with status(f"loading model '{model}' from the hub", progress, log):
            offline = hub_unavailable()
            if offline and not _in_hub_cache(model):
                raise InputError(f"model '{model}' is not in the local hub cache and {offline}; download it on a "
                                 "machine that reaches the hub, or give a local diffusers SVD directory")
            # Offline with the model cached: read the cache only, never the network (no retries).
            return _load_pretrained(model, {"kind": "hub", "name": model}, variant, local_only=bool(offline))
    raise InputError(
        f"unknown model '{model}': not a preset ({', '.join(PRESETS)}), not an existing directory, "
        f"and not a hub id (owner/name)"
    )


def build_preset(name: str) -> SvdModel:
    """Build preset ``name`` with its seeded random weights (the same weights every time).

    Raises:
        InputError: ``name`` is not a preset.
    """
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if name not in PRESETS:
        raise InputError(f"unknown preset '{name}': choose from {', '.join(PRESETS)}")
    p = PRESETS[name]
    fast = p.get("init") == "fast"
    # fork_rng keeps the caller's global RNG state untouched by the seeded initialisation.
    with torch.random.fork_rng(devices=[]), (_SkippedInit() if fast else contextlib.nullcontext()):
        torch.manual_seed(p["seed"])
        unet = UNetSpatioTemporalConditionModel(**p["unet"])
        vae = AutoencoderKLTemporalDecoder(**p["vae"])
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**p["image_encoder"]))
    if fast:
        for i, module in enumerate((unet, vae, image_encoder)):
            fast_seeded_init(module, seed=p["seed"] * 10 + i)
    return SvdModel(
        image_encoder=image_encoder.eval(), vae=vae.eval(), unet=unet.eval(),
        scheduler_config=dict(SVD_SCHEDULER), feature_extractor_config=dict(SVD_FEATURE_EXTRACTOR),
        source={"kind": "preset", "name": name, "seed": p["seed"]},
        default_shape=(p["frames"], p["height"], p["width"]),
    )


class _SkippedInit(torch.overrides.TorchFunctionMode):
    """Turns the random initialisation of parameters into a no-op while modules are constructed
    (the idea of ``torch.nn.utils.skip_init`` and transformers' ``no_init_weights``, applied to a
    whole model); those parameters are left uninitialised, so the caller must fill every one
    (:func:`fast_seeded_init`).

    ``torch.nn.init.uniform_``, ``normal_``, ``constant_`` and ``kaiming_uniform_`` dispatch through
    ``handle_torch_function``, so the mode sees them whole; the others (``xavier_uniform_``,
    ``trunc_normal_``, ...) reach ``Tensor.uniform_`` / ``Tensor.normal_``, and so do modules that
    fill a parameter themselves. Only parameters are skipped: a buffer is never filled again, so it
    keeps its initialisation. A mode holds for the thread that enters it, not for the process:
    torch and its modules are not changed for any other caller.
    """

    SKIPPED = frozenset({torch.nn.init.uniform_, torch.nn.init.normal_, torch.nn.init.constant_,
                         torch.nn.init.kaiming_uniform_, torch.Tensor.uniform_, torch.Tensor.normal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SKIPPED:
            # torch.nn.init passes the tensor by keyword to handle_torch_function; a method gets it first
            tensor = kwargs["tensor"] if "tensor" in kwargs else args[0]
            if isinstance(tensor, torch.nn.Parameter):
                return tensor
        return func(*args, **kwargs)


@torch.no_grad()
def fast_seeded_init(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter of ``module`` from a seeded normal draw, in place.

    Normalisation layers get weight 1 and bias 0 (their usual init); other weights of rank >= 2
    get N(0, 1/fan_in) (variance-preserving, like the default inits in scale), other
    parameters (biases, embeddings of rank 1, blend factors) N(0, 0.02^2). About 10x faster
    than the modules' own initialisers at SVD scale; the values are arbitrary but reproducible.
    """
    g = torch.Generator("cpu").manual_seed(seed)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d)
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            if isinstance(sub, norms):
                p.fill_(1.0 if name == "weight" else 0.0)
            elif p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)


#: Seconds to wait for the hub's first answer before calling it unreachable: one try, no retries.
HUB_TIMEOUT_SECONDS = 10


def hub_unavailable() -> str | None:
    """Why the Hugging Face hub cannot be asked now (``HF_HUB_OFFLINE`` set, or its endpoint,
    ``HF_ENDPOINT`` or huggingface.co, not answering one request within
    :data:`HUB_TIMEOUT_SECONDS`), or None when it answers. huggingface_hub itself retries an
    unreachable endpoint with backoff (about half a minute of warnings); this asks once."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"),
                               timeout=HUB_TIMEOUT_SECONDS).close()
    except urllib.error.HTTPError:
        return None  # an HTTP status is an answer: the hub is there
    except (OSError, ValueError) as e:
        return f"the hub at {constants.ENDPOINT} cannot be reached ({getattr(e, 'reason', e)})"
    return None


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "unet/config.json"), str)


def _load_pretrained(where: str, source: dict, variant: str | None, local_only: bool = False) -> SvdModel:
    import diffusers
    import transformers

    local = source["kind"] == "directory"
    if local:
        missing = [d for d in (*_MODULES, "scheduler", "feature_extractor") if not (Path(where) / d).is_dir()]
        if missing:
            raise InputError(f"model directory '{where}' is missing {', '.join(missing)}; "
                             "give a complete diffusers Stable Video Diffusion directory")
    modules = {}
    for sub, cls_name in _MODULES.items():
        declared = _declared_class(where, sub) if local else None
        if declared and declared != cls_name:
            raise InputError(f"model '{where}': {sub} is a {declared}, not a {cls_name}; "
                             "svdtrt exports Stable Video Diffusion models only")
        cls = getattr(diffusers, cls_name, None) or getattr(transformers, cls_name)
        try:
            modules[sub] = cls.from_pretrained(where, subfolder=sub, variant=variant, torch_dtype=torch.float32,
                                               local_files_only=local_only).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"cannot load {sub} of model '{where}': {first_line(e)}") from None
    try:
        scheduler_config = dict(diffusers.EulerDiscreteScheduler.load_config(where, subfolder="scheduler",
                                                                             local_files_only=local_only))
        feature_config = transformers.CLIPImageProcessor.from_pretrained(
            where, subfolder="feature_extractor", local_files_only=local_only).to_dict()
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the scheduler or feature extractor config of model '{where}': "
                         f"{first_line(e)}") from None
    unet = modules["unet"]
    dims = ModelDims.from_configs(unet.config, modules["vae"].config, modules["image_encoder"].config.to_dict())
    side = unet.config.sample_size * dims.latent_scale  # diffusers' pipeline falls back to this size
    return SvdModel(
        image_encoder=modules["image_encoder"], vae=modules["vae"], unet=unet,
        scheduler_config=_plain(scheduler_config),
        feature_extractor_config={k: v for k, v in feature_config.items() if not k.startswith("_")},
        source=source, default_shape=(dims.default_frames, side, side),
    )


def _declared_class(directory: str, sub: str) -> str | None:
    config = Path(directory) / sub / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        raise InputError(f"model directory '{directory}' has no readable {sub}/config.json") from None
    if "_class_name" in data:
        return data["_class_name"]
    architectures = data.get("architectures") or [None]
    return architectures[0]


def reference_model(bundle, model: SvdModel | None = None) -> SvdModel:
    """The bundle's source model: ``model`` if given, else rebuilt from the manifest's source.

    Raises:
        BundleError: the model's configs differ from those the bundle was exported from (the
            config hashes in the manifest), so it would run or compare another model.
        InputError: the recorded source cannot be loaded here.
    """
    from ..errors import BundleError

    model = model or load_model(bundle.source)
    if model.config_hashes() != bundle.manifest.config_hashes:
        raise BundleError(f"the model given ('{model.source.get('name')}') is not the one bundle '{bundle.path}' "
                          f"was exported from (config hashes differ); pass its source model, '{bundle.source}', "
                          "with --model, or leave --model out")
    return model
