"""``manifest.json``: the typed, versioned schema of a bundle, owned here alone
(docs/architecture.md, "The manifest").

Every stage reads and writes a bundle's manifest through :class:`Manifest` (a pydantic model):
:func:`read` validates a file and :func:`dump` serialises one. pydantic is the validation
library because its strict mode refuses ``"4"`` for 4 and non-finite floats, its errors name
the field's path (``components.unet.graphs.fp16.file``), and a schema is plain annotated
classes that the architecture document can show as they are.

Rules beyond types, checked on every read and write:
- every path is a relative POSIX name inside the bundle: no ``..``, no absolute path, no
  backslash, not ``manifest.json`` (links leading out are refused when a bundle is opened);
- ``files`` records the size and sha256 of every file of the bundle, and is exactly the set of
  files the rest of the manifest refers to (graphs, external data, calibration shards,
  engines and sidecars, processing configs): nothing listed is unused, nothing used is unlisted;
- ``configs`` hold what the runtime builds from them (scheduler, CLIP preprocessing, the UNet's
  levels) and ``dims`` are what those configs give (:mod:`svdtrt.bundle.configs`).

The format version is :data:`FORMAT_VERSION`; a manifest of another version is refused with a
message saying to re-export (version 1 had no ``files`` and no schema). ``profiles`` (named sampling
settings from ``svdtrt tune --apply``) came later within version 2: older bundles lack it and read
as having none, and a manifest without profiles is written without the key.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from .. import hints
from ..errors import BundleError
from ..precisions import NAMES as PRECISION_NAMES
from ..specs import COMPONENTS
from .configs import configs_problem

#: Bumped whenever a change makes older bundles unreadable.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: The processing configs every bundle carries as files (as in a diffusers model directory).
CONFIG_FILES = {"scheduler": "scheduler/scheduler_config.json",
                "feature_extractor": "feature_extractor/preprocessor_config.json"}


def _relative_path(value: str) -> str:
    p = PurePosixPath(value)
    if (not value or "\\" in value or "\0" in value or p.is_absolute() or p.as_posix() != value
            or any(part in ("..", ".") for part in p.parts) or value == MANIFEST):
        raise ValueError(f"'{value}' is not a relative path inside the bundle")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _precision_name(value: str) -> str:
    if value not in PRECISION_NAMES:
        raise ValueError(f"unknown precision '{value}' (known: {', '.join(PRECISION_NAMES)})")
    return value


def _component_name(value: str) -> str:
    if value not in COMPONENTS:
        raise ValueError(f"unknown component '{value}' (known: {', '.join(COMPONENTS)})")
    return value


RelPath = Annotated[str, AfterValidator(_relative_path)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Size = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Finite = Annotated[float, AfterValidator(_finite)]
Seconds = Annotated[float, AfterValidator(_finite), Field(ge=0)]
PrecisionName = Annotated[str, AfterValidator(_precision_name)]
ComponentName = Annotated[str, AfterValidator(_component_name)]
Json = dict[str, JsonValue]


class Schema(BaseModel):
    """No unknown keys; a manifest file is parsed strictly (no coercion: "4" is not 4)."""

    model_config = ConfigDict(extra="forbid")


class FileRecord(Schema):
    """One file of the bundle: its size in bytes and its sha256 (hex)."""

    bytes: Size
    sha256: Sha256


class Range(Schema):
    """min/opt/max of one clip size (frames; pixels)."""

    min: Positive
    opt: Positive
    max: Positive

    @model_validator(mode="after")
    def _ordered(self):
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"needs min <= opt <= max, got {self.min}:{self.opt}:{self.max}")
        return self

    def as_tuple(self) -> tuple[int, int, int]:
        return self.min, self.opt, self.max


class Shapes(Schema):
    """The clip-size ranges the bundle was exported for."""

    frames: Range
    height: Range
    width: Range


class Source(Schema):
    """Where the model came from; ``name`` is the ``MODEL`` argument that rebuilds it."""

    kind: Literal["preset", "directory", "hub"]
    name: str
    seed: int | None = None

    def random_weights_note(self) -> str | None:
        """What a clip of this model shows when it has seeded random weights (every preset: see
        :mod:`svdtrt.models.presets`), or None for a trained model."""
        if self.kind != "preset":
            return None
        return (f"the model is the '{self.name}' preset, an SVD-architecture model with seeded random weights "
                f"(seed {self.seed}), not a trained one: its clip is noise-like texture, not a video of the "
                "photo; it shows that svdtrt computes the same clip as diffusers ('svdtrt check' measures "
                "how closely). For real video, export a trained SVD model (a diffusers directory or hub id)")


class Dims(Schema):
    """:class:`svdtrt.specs.ModelDims` as recorded."""

    latent_channels: Positive
    embed_dim: Positive
    latent_scale: Positive
    unet_downsamples: Annotated[int, Field(ge=0)]
    scaling_factor: Annotated[float, AfterValidator(_finite), Field(gt=0)]
    default_frames: Positive
    #: Block caching (absent in bundles exported before it: the defaults).
    cache_depth: Positive = 1
    cache_layer: Annotated[int, Field(ge=0)] = 0
    deep_channels: Annotated[int, Field(ge=0)] = 0


class TensorEntry(Schema):
    name: str
    dims: list[str]
    dtype: str


class ProfileShapes(Schema):
    """One input's TensorRT optimization-profile shapes."""

    min: list[Positive]
    opt: list[Positive]
    max: list[Positive]


class Accuracy(Schema):
    """Per-output metrics (``cosine``, ``max_abs_error``, ``mean_abs_error``, ``psnr_db``...)."""

    outputs: dict[str, dict[str, Finite]]
    samples: Positive | None = None
    measured_by: str | None = None
    shape: dict[str, Positive] | None = None
    reference: str | None = None
    tolerances: dict[str, Finite] | None = None


class Quantization(Schema):
    """How a Q/DQ graph was made and what it costs in accuracy on held-out samples."""

    calibration: str
    calibration_samples: Positive
    settings: Json
    excluded_nodes: list[str]
    qdq: Json
    held_out_accuracy: Accuracy


class GraphEntry(Schema):
    """One graph of a component at one precision.

    ``kept_precision`` names the precision whose graph this entry reuses (a quantized
    precision keeps the once-per-clip components in fp32).
    """

    file: RelPath
    data: RelPath | None
    bytes: Size
    seconds: Seconds | None = None
    kept_precision: PrecisionName | None = None
    validation: Accuracy | None = None
    deployability: Json | None = None
    conversion: Json | None = None
    quantization: Quantization | None = None


class ComponentEntry(Schema):
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    profile: dict[str, ProfileShapes]
    graph_axes: dict[str, list[str | int]]
    fixed_axes: list[str]
    graphs: dict[PrecisionName, GraphEntry]


class CalibrationImage(Schema):
    name: str
    sha256: Sha256
    seed: int
    split: Literal["calibration", "held_out"]


class CalibrationShards(Schema):
    """Shard file names (inside the set's directory) per split."""

    calibration: list[str]
    held_out: list[str]
    per_timestep: dict[str, Positive] | None = None


class CalibrationEntry(Schema):
    directory: RelPath
    created: str
    images: list[CalibrationImage]
    steps: Positive
    settings: Json
    components: dict[ComponentName, CalibrationShards]
    seconds: Seconds

    def shard_paths(self, component: str, split: str) -> list[str]:
        shards = self.components.get(component)
        return [f"{self.directory}/{name}" for name in (getattr(shards, split) if shards else [])]


class EngineEntry(Schema):
    """A TensorRT engine and its JSON sidecar (:mod:`svdtrt.bundle.engines`)."""

    component: ComponentName
    precision: PrecisionName
    engine: RelPath
    sidecar: RelPath


class ProfileSettings(Schema):
    """What a profile sets: the backend and precision, and the work-reduction settings of
    :class:`~svdtrt.runtime.settings.SamplingSettings` (``guidance_steps`` None: every step).
    Also ``svdtrt tune``'s candidate (frozen, so it keys the tune's tables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    precision: PrecisionName
    scheduler: str
    steps: Positive
    cache_interval: Positive
    guidance_steps: Annotated[int, Field(ge=0)] | None = None

    def describe(self) -> str:
        """The settings in words, backend aside: ``fp32 euler 15 steps, cache 2, guidance 12``."""
        g = "all" if self.guidance_steps is None else self.guidance_steps
        return f"{self.precision} {self.scheduler} {self.steps} steps, cache {self.cache_interval}, guidance {g}"


class Floor(Schema):
    """A quality floor: the worst frame over every tuning image against the full-compute fp32 clip
    (PSNR in dB, SSIM); None where the floor sets no bound."""

    min_psnr_db: Finite | None = None
    min_ssim: Finite | None = None

    def describe(self) -> str:
        """``PSNR >= 30 dB and SSIM >= 0.95``."""
        return " and ".join(text for text in (self.min_psnr_db is not None and f"PSNR >= {self.min_psnr_db:g} dB",
                                              self.min_ssim is not None and f"SSIM >= {self.min_ssim:g}") if text)


class ProfileQuality(Schema):
    """A profile's measured quality: the worst frame over the tuning images (and over the held-out
    images, when ``tune`` checked them) against the full-compute fp32 clip, PSNR in dB and SSIM."""

    min_psnr_db: Finite
    min_ssim: Finite
    held_out_min_psnr_db: Finite | None = None
    held_out_min_ssim: Finite | None = None


class ProfileSpeed(Schema):
    """A profile's measured speed: median seconds per clip over ``clips`` clips, the exact
    profile's measured in the same run beside it, and the UNet FLOPs per clip of each (counted,
    :mod:`svdtrt.models.flops`)."""

    seconds_per_clip: Seconds
    clips: Positive
    exact_seconds_per_clip: Seconds
    speedup_vs_exact: Finite
    unet_flops: Annotated[int, Field(ge=0)]
    exact_unet_flops: Annotated[int, Field(ge=0)]


class ProfileClip(Schema):
    """The clip a profile was measured on: size (frames; pixels) and the first image's seed."""

    frames: Positive
    height: Positive
    width: Positive
    seed: Annotated[int, Field(ge=0)]


class ProfileImage(Schema):
    name: str
    sha256: Sha256
    seed: Annotated[int, Field(ge=0)]


class MeasuredWith(Schema):
    """What a profile was measured with: the model's config hashes, and the weights identity
    (:func:`svdtrt.bundle.profiles.weights_identity`) of the graphs of each precision it ran
    (its own and fp32, the reference's)."""

    config_hashes: dict[str, Sha256]
    weights: dict[PrecisionName, Sha256]


class Profile(Schema):
    """A named profile: settings found by ``svdtrt tune`` and how they measured
    (docs/architecture.md, "Tuning").

    Attributes:
        floor: the floor it was chosen for (None for ``exact``: the reference itself).
        machine: the machine and its load while the tune ran, in words
            (:meth:`svdtrt.runtime.measure.Machine.summary`).
        tuned_for: the floor ``svdtrt tune`` was given (``--min-psnr``, ``--min-ssim``), from
            which every profile's floor follows: what measuring it again takes.
    """

    settings: ProfileSettings
    floor: Floor | None
    tuned_for: Floor
    quality: ProfileQuality
    speed: ProfileSpeed
    clip: ProfileClip
    images: list[ProfileImage]
    held_out_images: list[ProfileImage] = []
    machine: str
    measured_with: MeasuredWith
    created: str


class Manifest(Schema):
    """The whole ``manifest.json`` (see the module doc for the rules)."""

    format_version: Literal[2]
    created: str
    source: Source
    config_hashes: dict[str, Sha256]
    configs: dict[str, Json]
    dims: Dims
    exporter: Json
    tools: dict[str, str | None]
    shapes: Shapes
    files: dict[RelPath, FileRecord]
    components: dict[ComponentName, ComponentEntry]
    calibration: dict[str, CalibrationEntry] = {}
    engines: dict[str, EngineEntry] = {}
    profiles: dict[str, Profile] = {}

    def referenced_files(self) -> set[str]:
        """Every file name the manifest refers to, besides ``files`` itself."""
        names = set(CONFIG_FILES.values())
        for entry in self.components.values():
            for graph in entry.graphs.values():
                names.update(n for n in (graph.file, graph.data) if n)
        for cal in self.calibration.values():
            for c in cal.components:
                names.update(cal.shard_paths(c, "calibration") + cal.shard_paths(c, "held_out"))
        for engine in self.engines.values():
            names.update((engine.engine, engine.sidecar))
        return names

    def files_problem(self) -> str | None:
        """Why ``files`` is not exactly the set of files the manifest refers to, or None."""
        used, listed = self.referenced_files(), set(self.files)
        for name in sorted(used):
            try:
                _relative_path(name)
            except ValueError as e:
                return str(e)
        if used - listed:
            return f"files does not list {', '.join(sorted(used - listed))}"
        if listed - used:
            return f"files lists {', '.join(sorted(listed - used))}, which nothing refers to"
        return None


def _field(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse(text: str | bytes, where: str) -> Manifest:
    """Validate ``manifest.json``'s text.

    Args:
        text: the file's content.
        where: the bundle's path, for messages.
    Raises:
        BundleError: not JSON, another format version, or a field that is missing, of the wrong
            type, non-finite, negative or otherwise invalid; the message names the field.
    """
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise BundleError(f"bundle '{where}' has a corrupt {MANIFEST} (not JSON: {e}); "
                          f"{reexport(where, _source_name(text))}") from None
    except RecursionError:
        raise BundleError(f"bundle '{where}' has a corrupt {MANIFEST} (nested too deeply to be a manifest); "
                          f"{reexport(where, _source_name(text))}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"bundle '{where}' has a corrupt {MANIFEST} (not a JSON object); "
                          f"{reexport(where, _source_name(text))}")
    source = raw.get("source", {}).get("name") if isinstance(raw.get("source"), dict) else None
    source = source if isinstance(source, str) and source else _source_name(text)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"bundle '{where}' has format version {version}, this svdtrt reads version "
                          f"{FORMAT_VERSION}; {reexport(where, source)}")
    fix = f"{reexport(where, source)}, or restore the manifest"
    try:
        manifest = Manifest.model_validate_json(text, strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise BundleError(f"bundle '{where}' has an invalid {MANIFEST}: field '{_field(err['loc'])}': "
                          f"{err['msg']}{more}; {fix}") from None
    problem = manifest.files_problem()
    if problem:
        raise BundleError(f"bundle '{where}' has an invalid {MANIFEST}: {problem}; {fix}")
    problem = configs_problem(manifest.configs, manifest.dims.model_dump())
    if problem:
        raise BundleError(f"bundle '{where}' has an invalid {MANIFEST}: field '{problem[0]}': {problem[1]}; {fix}")
    return manifest


def _source_name(text: str | bytes) -> str | None:
    """The source model's name, read from a manifest too damaged to parse (``source`` comes
    early in the file, so a truncated one usually still names it)."""
    import re

    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    match = re.search(r'"source"\s*:\s*\{[^{}]*?"name"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    return json.loads(f'"{match.group(1)}"') if match else None


def reexport(where: str | os.PathLike, source: str | None) -> str:
    """The advice to export the bundle at ``where`` again (its manifest cannot be read: nothing in
    it can be kept), as a command: with the source model when the manifest still names it, else
    with the demo preset standing for it."""
    if source:
        return f"re-export it with '{hints.export(source, where, force=True)}'"
    return (f"re-export it from the model it came from with '{hints.export(hints.EXAMPLE_MODEL, where, force=True)}' "
            f"({hints.EXAMPLE_MODEL} is the demo preset: name that model instead, a diffusers directory, a hub id or a "
            "preset)")


def dump(manifest: Manifest) -> bytes:
    """The manifest as indented JSON, validated again first (a bug never writes a bad manifest).

    Raises:
        pydantic.ValidationError, ValueError: the manifest breaks a rule (a bug in the stage
            that built it).
    """
    # A bundle without profiles is written without the key, so that an svdtrt from before profiles
    # (which refuses unknown keys) still reads it: adding profiles changes no format version.
    text = manifest.model_dump_json(indent=2, exclude=None if manifest.profiles else {"profiles"}) + "\n"
    Manifest.model_validate_json(text, strict=True)
    problem = manifest.files_problem() or configs_problem(manifest.configs, manifest.dims.model_dump())
    if problem:
        raise ValueError(f"refusing to write an inconsistent manifest: {problem}")
    return text.encode()


def build(**fields: Any) -> Manifest:
    """A new manifest from plain values (validated; see :class:`Manifest`)."""
    return Manifest.model_validate({"format_version": FORMAT_VERSION, **fields})
