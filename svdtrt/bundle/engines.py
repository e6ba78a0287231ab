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

from .. import __version__, hints
from ..errors import EngineError

ENGINE_DIR = "engines"
#: Bumped when the sidecar's fields change meaning; other versions are treated as stale.
SIDECAR_VERSION = 2


def engine_name(component: str, precision: str) -> str:
    """``engines/<component>.<precision>.engine``, relative to the bundle."""
    return f"{ENGINE_DIR}/{component}.{precision}.engine"


def sidecar_name(engine: str) -> str:
    """The sidecar beside ``engine``: the engine's name plus ``.json``."""
    return engine + ".json"


def make_sidecar(component: str, precision: str, graph: str, graph_sha: str, engine: bytes, profile: dict,
                 profile_kind: str, flags: dict, tensorrt: str, gpu: dict, build_seconds: float,
                 shapes: dict | None = None) -> dict:
    """The sidecar of a freshly built engine.

    Args:
        component, precision: what was built.
        graph, graph_sha: the graph's file name and :meth:`svdtrt.bundle.store.Bundle.graph_identity`.
        engine: the serialized engine (its size and sha256 are recorded).
        profile: ``{input: {"min", "opt", "max"}}`` of the engine's one optimization profile.
        profile_kind: ``"static"`` or ``"dynamic"``.
        flags: the builder settings (the ``flags`` of :func:`svdtrt.build.plan.plan_build`).
        tensorrt: ``tensorrt.__version__`` of the builder.
        gpu: ``{"name", "compute_capability", ...}`` of the building GPU (:func:`svdtrt.environment.cuda_device`).
        build_seconds: wall-clock build time in seconds.
        shapes: the plan's clip-size ranges ``{"frames"|"height"|"width": {"min", "opt", "max"}}``.
    """
    return {
        "sidecar_version": SIDECAR_VERSION,
        "component": component, "precision": precision,
        "graph": {"file": graph, "sha256": graph_sha},
        "engine": {"bytes": len(engine), "sha256": hashlib.sha256(engine).hexdigest()},
        "profile_kind": profile_kind, "profile": profile, "shapes": shapes, "flags": flags,
        "tensorrt": tensorrt,
        "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "build_seconds": round(build_seconds, 3),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "svdtrt": __version__,
    }


def read_sidecar(bundle, component: str, precision: str) -> dict | None:
    """The sidecar of the bundle's ``component``/``precision`` engine as the manifest lists it, or
    None when there is no such engine or its sidecar is unreadable."""
    entry = bundle.manifest.engines.get(f"{component}.{precision}")
    if entry is None:
        return None
    try:
        sidecar = json.loads((bundle.path / entry.sidecar).read_text())
    except (OSError, ValueError):
        return None
    return sidecar if isinstance(sidecar, dict) else None


def stale_reasons(sidecar: dict | None, expected: dict) -> list[str]:
    """Why an engine with ``sidecar`` may not be used where ``expected`` holds; empty if it may.

    Args:
        sidecar: from :func:`read_sidecar` (None: no engine or no sidecar).
        expected: any of ``graph_sha256``, ``precision``, ``tensorrt``, ``gpu``
            (``{"name", "compute_capability"}``), ``profile`` and ``profile_kind``; only the
            keys given are compared (the runtime does not ask for a profile, a build does).
    Returns:
        Short phrases, e.g. ``"it was built with TensorRT 10.3.0, this is 10.13.0"``.
    """
    if sidecar is None:
        return ["there is no engine with a readable sidecar"]
    if sidecar.get("sidecar_version") != SIDECAR_VERSION:
        return [f"its sidecar has version {sidecar.get('sidecar_version')}, this svdtrt writes {SIDECAR_VERSION}"]
    reasons = []
    if "graph_sha256" in expected and sidecar.get("graph", {}).get("sha256") != expected["graph_sha256"]:
        reasons.append(f"it was built from another graph (sha256 {str(sidecar.get('graph', {}).get('sha256'))[:12]}, "
                       f"the bundle's is {expected['graph_sha256'][:12]})")
    if "precision" in expected and sidecar.get("precision") != expected["precision"]:
        reasons.append(f"it is a {sidecar.get('precision')} engine, not {expected['precision']}")
    if "tensorrt" in expected and sidecar.get("tensorrt") != expected["tensorrt"]:
        reasons.append(f"it was built with TensorRT {sidecar.get('tensorrt')}, this is {expected['tensorrt']}")
    if "gpu" in expected:
        built, here = sidecar.get("gpu", {}), expected["gpu"]
        if (built.get("name"), built.get("compute_capability")) != (here["name"], here["compute_capability"]):
            reasons.append(f"it was built on a {built.get('name')} (compute capability "
                           f"{built.get('compute_capability')}), this is a {here['name']} "
                           f"(compute capability {here['compute_capability']})")
    if "profile_kind" in expected and sidecar.get("profile_kind") != expected["profile_kind"]:
        reasons.append(f"it has a {sidecar.get('profile_kind')} profile, not {expected['profile_kind']}")
    elif "profile" in expected and sidecar.get("profile") != expected["profile"]:
        reasons.append("its optimization profile has other shapes")
    return reasons


def rebuild_command(bundle_path: Path, component: str, precision: str, sidecar: dict | None = None) -> str:
    """The ``svdtrt build`` command line that rebuilds one engine as it was built: the same
    profile kind and, for a static engine, the same clip size (:func:`svdtrt.hints.build`)."""
    profile, shapes = None, None
    if sidecar and sidecar.get("profile_kind"):
        profile = sidecar["profile_kind"]
        if profile == "static" and sidecar.get("shapes"):
            shapes = {key: sidecar["shapes"][key]["opt"] for key in ("frames", "height", "width")}
    return hints.build(bundle_path, precision, profile, shapes, [component], force=True)


def usable_engine(bundle, component: str, precision: str, tensorrt: str, gpu: dict) -> tuple[Path, dict]:
    """The engine of ``component`` at ``precision`` and its sidecar, checked for this machine.

    The graph's identity comes from the manifest's recorded hashes (nothing is hashed here);
    the engine's size was checked against the manifest when the bundle was opened.

    Raises:
        EngineError: the engine is missing, has no sidecar, or was built from another graph,
            for another GPU or with another TensorRT version; the message lists why and gives
            the ``svdtrt build`` command that rebuilds it.
        BundleError: the bundle has no graph of that precision.
    """
    sidecar = read_sidecar(bundle, component, precision)
    if sidecar is None:
        raise EngineError(f"no {precision} engine for {component} in '{bundle.path}'; build it with "
                          f"'{rebuild_command(bundle.path, component, precision)}'")
    expected = {"graph_sha256": bundle.graph_identity(component, precision), "precision": precision,
                "tensorrt": tensorrt, "gpu": gpu}
    reasons = stale_reasons(sidecar, expected)
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
