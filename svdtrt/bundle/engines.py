"""TensorRT engines in a bundle: where they live, their JSON sidecars, and when one is stale.

Layout::

    BUNDLE/engines/<component>.<precision>.engine        the serialized engine (a TensorRT plan)
    BUNDLE/engines/<component>.<precision>.engine.json   its sidecar (see :func:`make_sidecar`)

Both are bundle files like any other: the manifest lists them (``engines`` and ``files``, with
size and sha256), and ``svdtrt build`` writes them in a bundle transaction. A TensorRT engine
only runs on the TensorRT version that built it and is tuned for one GPU model (TensorRT
developer guide, "Serialized engines are not portable across platforms or TensorRT
versions"), and it bakes in the graph's weights. The sidecar records all three (the graph's
identity from the manifest's hashes, TensorRT version, GPU name and compute capability), so
that the runtime refuses a stale engine with the command that rebuilds it, and ``svdtrt build``
reuses an engine whose inputs have not changed. This module is shared by the build stage
(:mod:`svdtrt.build`) and the runtime (:mod:`svdtrt.runtime.backends.trt`); it imports neither,
nor TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from .. import __version__, hints
from ..errors import EngineError
from .manifest import ComponentName, PrecisionName, ProfileShapes, Schema, Seconds, Sha256, Shapes, Size

ENGINE_DIR = "engines"
#: Bumped when the sidecar's fields change meaning; other versions are treated as stale.
SIDECAR_VERSION = 2
#: Why there is nothing to reuse or run: no engine, or a sidecar that cannot be read.
NO_ENGINE = "there is no engine with a readable sidecar"


def engine_name(component: str, precision: str) -> str:
    """``engines/<component>.<precision>.engine``, relative to the bundle."""
    return f"{ENGINE_DIR}/{component}.{precision}.engine"


def sidecar_name(engine: str) -> str:
    """The sidecar beside ``engine``: the engine's name plus ``.json``."""
    return engine + ".json"


class BuildFlags(Schema):
    """The builder settings of an engine (what ``svdtrt build`` plans and the sidecar records).

    Attributes:
        strongly_typed: a strongly typed network (precision from the graph; docs/architecture.md,
            "Precisions").
        builder_precision_flags: always empty: precision comes from the graph (TensorRT 11 has none).
        tf32: TF32 tactics for fp32 layers (off: an fp32 engine computes in fp32).
        workspace_bytes: the workspace memory-pool limit in bytes (None: TensorRT's default).
        timing_cache: the tactic timing-cache file read and updated (None in a plan: the
            build's default, :func:`svdtrt.build.builder.default_timing_cache`; a sidecar records
            the file used).
    """

    model_config = Schema.model_config | {"frozen": True}

    strongly_typed: bool = True
    builder_precision_flags: list[str] = []
    tf32: bool = False
    workspace_bytes: Size | None = None
    timing_cache: str | None = None

    def engine_settings(self) -> dict:
        """The settings that shape the engine built, part of its staleness key
        (:func:`stale_reasons`): every field but the timing cache, which only speeds a build up
        (TensorRT picks among the tactics it times either way)."""
        return self.model_dump(exclude={"timing_cache"})


class GraphIdentity(Schema):
    """The graph an engine was built from: its file name and :meth:`Bundle.graph_identity`."""

    file: str
    sha256: Sha256


class EngineFile(Schema):
    """The serialized engine's size (bytes) and sha256."""

    bytes: Size
    sha256: Sha256


class BuildGpu(Schema):
    """The GPU an engine was built on (an engine is tuned for one GPU model)."""

    name: str
    compute_capability: str


class Sidecar(Schema):
    """An engine's JSON sidecar: what the engine depends on (the graph, TensorRT, the GPU) and
    how it was built. Parsed only by :func:`load_sidecar`."""

    sidecar_version: Literal[2]
    component: ComponentName
    precision: PrecisionName
    graph: GraphIdentity
    engine: EngineFile
    profile_kind: Literal["static", "dynamic"]
    #: ``{input: min/opt/max shape}`` of the engine's one optimization profile.
    profile: dict[str, ProfileShapes]
    #: The plan's clip-size ranges (frames; pixels), None for an engine built without a plan.
    shapes: Shapes | None = None
    flags: BuildFlags
    tensorrt: str
    gpu: BuildGpu
    build_seconds: Seconds
    built: str
    svdtrt: str

    def profile_lists(self) -> dict[str, dict[str, list[int]]]:
        """The optimization profile as ``{input: {"min", "opt", "max"}}`` lists (the build plan's form)."""
        return {name: shapes.model_dump() for name, shapes in self.profile.items()}


class SidecarError(ValueError):
    """A sidecar that cannot be used; ``str()`` is the reason as a short phrase.

    Attributes:
        unreadable: True when the file is missing, not JSON or not a sidecar.
        version: the ``sidecar_version`` of a sidecar of another version (``unreadable`` False).
    """

    def __init__(self, reason: str, unreadable: bool = True, version=None):
        super().__init__(reason)
        self.unreadable, self.version = unreadable, version


def make_sidecar(component: str, precision: str, graph: str, graph_sha: str, engine: bytes, profile: dict,
                 profile_kind: str, flags: BuildFlags | dict, tensorrt: str, gpu: dict, build_seconds: float,
                 shapes: dict | None = None) -> Sidecar:
    """The sidecar of a freshly built engine.

    Args:
        component, precision: what was built.
        graph, graph_sha: the graph's file name and :meth:`svdtrt.bundle.store.Bundle.graph_identity`.
        engine: the serialized engine (its size and sha256 are recorded).
        profile: ``{input: {"min", "opt", "max"}}`` of the engine's one optimization profile.
        profile_kind: ``"static"`` or ``"dynamic"``.
        flags: the builder settings (the plan's :class:`BuildFlags`).
        tensorrt: ``tensorrt.__version__`` of the builder.
        gpu: ``{"name", "compute_capability", ...}`` of the building GPU (:func:`svdtrt.environment.cuda_device`).
        build_seconds: wall-clock build time in seconds.
        shapes: the plan's clip-size ranges ``{"frames"|"height"|"width": {"min", "opt", "max"}}``.
    Raises:
        pydantic.ValidationError: a value the schema refuses (a bug in the caller).
    """
    return Sidecar.model_validate({
        "sidecar_version": SIDECAR_VERSION,
        "component": component, "precision": precision,
        "graph": {"file": graph, "sha256": graph_sha},
        "engine": {"bytes": len(engine), "sha256": hashlib.sha256(engine).hexdigest()},
        "profile_kind": profile_kind, "profile": profile, "shapes": shapes,
        "flags": BuildFlags.model_validate(flags) if isinstance(flags, dict) else flags,
        "tensorrt": tensorrt,
        "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "build_seconds": round(build_seconds, 3),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "svdtrt": __version__,
    })


def dump_sidecar(sidecar: Sidecar) -> dict:
    """The sidecar as the JSON object written beside its engine."""
    return sidecar.model_dump(mode="json")


def load_sidecar(path: Path) -> Sidecar:
    """The sidecar at ``path``: the one place a sidecar file is parsed.

    Raises:
        SidecarError: the file is missing or unreadable, not JSON, of another sidecar version
            (``unreadable`` False), or not a valid sidecar.
    """
    try:
        text = Path(path).read_text()
        raw = json.loads(text)
    except (OSError, ValueError):
        raise SidecarError(NO_ENGINE) from None
    version = raw.get("sidecar_version") if isinstance(raw, dict) else None
    if version != SIDECAR_VERSION:
        raise SidecarError(f"its sidecar has version {version}, this svdtrt writes {SIDECAR_VERSION}",
                           unreadable=not isinstance(raw, dict), version=version)
    try:
        return Sidecar.model_validate_json(text, strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise SidecarError(f"its sidecar is invalid (field '{field}': {err['msg']})") from None


def read_sidecar(bundle, component: str, precision: str) -> Sidecar | None:
    """The sidecar of the bundle's ``component``/``precision`` engine as the manifest lists it, or
    None when there is no such engine.

    Raises:
        SidecarError: the listed sidecar cannot be used (:func:`load_sidecar`).
    """
    entry = bundle.manifest.engines.get(f"{component}.{precision}")
    return None if entry is None else load_sidecar(bundle.path / entry.sidecar)


def stale_reasons(sidecar: Sidecar, expected: dict) -> list[str]:
    """Why an engine with ``sidecar`` may not be used where ``expected`` holds; empty if it may.

    Args:
        sidecar: the engine's sidecar (:func:`load_sidecar`).
        expected: any of ``graph_sha256``, ``precision``, ``tensorrt``, ``gpu``
            (``{"name", "compute_capability"}``), ``profile`` (``{input: {"min", "opt", "max"}}``),
            ``profile_kind`` and ``flags`` (:class:`BuildFlags`, compared by
            :meth:`BuildFlags.engine_settings`); only the keys given are compared (the runtime
            does not ask for a profile or flags, a build does).
    Returns:
        Short phrases, e.g. ``"it was built with TensorRT 10.3.0, this is 10.13.0"``.
    """
    reasons = []
    if "graph_sha256" in expected and sidecar.graph.sha256 != expected["graph_sha256"]:
        reasons.append(f"it was built from another graph (sha256 {sidecar.graph.sha256[:12]}, "
                       f"the bundle's is {expected['graph_sha256'][:12]})")
    if "precision" in expected and sidecar.precision != expected["precision"]:
        reasons.append(f"it is a {sidecar.precision} engine, not {expected['precision']}")
    if "tensorrt" in expected and sidecar.tensorrt != expected["tensorrt"]:
        reasons.append(f"it was built with TensorRT {sidecar.tensorrt}, this is {expected['tensorrt']}")
    if "gpu" in expected:
        built, here = sidecar.gpu, expected["gpu"]
        if (built.name, built.compute_capability) != (here["name"], here["compute_capability"]):
            reasons.append(f"it was built on a {built.name} (compute capability {built.compute_capability}), "
                           f"this is a {here['name']} (compute capability {here['compute_capability']})")
    if "profile_kind" in expected and sidecar.profile_kind != expected["profile_kind"]:
        reasons.append(f"it has a {sidecar.profile_kind} profile, not {expected['profile_kind']}")
    elif "profile" in expected and sidecar.profile_lists() != expected["profile"]:
        reasons.append("its optimization profile has other shapes")
    if "flags" in expected:
        built, asked = sidecar.flags.engine_settings(), expected["flags"].engine_settings()
        changed = [f"{k} {built[k]} -> {asked[k]}" for k in asked if built.get(k) != asked[k]]
        if changed:
            reasons.append(f"it was built with other builder settings ({', '.join(changed)})")
    return reasons


def build_options(sidecar: Sidecar | None) -> tuple[str | None, dict[str, int] | None]:
    """The ``build`` options that make an engine as the one ``sidecar`` describes: its profile kind
    and, for a static engine, its clip size (``{"frames", "height", "width": opt}``); (None,
    None), ``build``'s defaults, without a sidecar."""
    if sidecar is None:
        return None, None
    shapes = None
    if sidecar.profile_kind == "static" and sidecar.shapes is not None:
        shapes = {key: getattr(sidecar.shapes, key).opt for key in ("frames", "height", "width")}
    return sidecar.profile_kind, shapes


def rebuild_command(bundle_path: Path, component: str, precision: str, sidecar: Sidecar | None = None) -> str:
    """The ``svdtrt build`` command line that rebuilds one engine as it was built
    (:func:`build_options`, :func:`svdtrt.hints.build`)."""
    return hints.build(bundle_path, precision, *build_options(sidecar), [component], force=True)


def usable_engine(bundle, component: str, precision: str, tensorrt: str, gpu: dict) -> tuple[Path, Sidecar]:
    """The engine of ``component`` at ``precision`` and its sidecar, checked for this machine.

    The graph's identity comes from the manifest's recorded hashes (nothing is hashed here);
    the engine's size was checked against the manifest when the bundle was opened.

    Raises:
        EngineError: the engine is missing, has no sidecar, or was built from another graph,
            for another GPU or with another TensorRT version; the message lists why and gives
            the ``svdtrt build`` command that rebuilds it.
        BundleError: the bundle has no graph of that precision.
    """
    missing = EngineError(f"no {precision} engine for {component} in '{bundle.path}'; build it with "
                          f"'{rebuild_command(bundle.path, component, precision)}'")
    try:
        sidecar = read_sidecar(bundle, component, precision)
    except SidecarError as e:
        if e.unreadable:
            raise missing from None
        sidecar, reasons = None, [str(e)]
    else:
        if sidecar is None:
            raise missing
        reasons = stale_reasons(sidecar, {"graph_sha256": bundle.graph_identity(component, precision),
                                          "precision": precision, "tensorrt": tensorrt, "gpu": gpu})
    if reasons:
        raise EngineError(f"the {component} {precision} engine is stale: {'; '.join(reasons)}; rebuild it with "
                          f"'{rebuild_command(bundle.path, component, precision, sidecar)}'")
    return bundle.path / bundle.manifest.engines[f"{component}.{precision}"].engine, sidecar


def check_shapes(component: str, profile: dict, shapes: dict[str, tuple[int, ...]], rebuild: str) -> None:
    """Raise unless every input shape lies within the engine's optimization profile.

    Args:
        profile: ``{input: {"min": [...], "opt": [...], "max": [...]}}`` (the sidecar's).
        shapes: ``{input: shape}`` of one call.
        rebuild: the command to suggest.
    Raises:
        EngineError: an input is missing, has another rank, or a dimension outside [min, max].
    """
    for name, p in profile.items():
        if name not in shapes:
            raise EngineError(f"{component}: input '{name}' is missing")
        shape, lo, hi = list(shapes[name]), p["min"], p["max"]
        if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
            raise EngineError(f"{component}: input '{name}' has shape {shape}, outside the engine's optimization "
                              f"profile (min {lo}, max {hi}); rebuild it for this shape with '{rebuild}' and "
                              "--frames/--height/--width, or use --profile dynamic")
