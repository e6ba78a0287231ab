"""TensorRT engines in a bundle: where they live, their JSON sidecars, and when one is stale.

Layout::

    BUNDLE/engines/<component>.<precision>.engine        the serialized engine (a TensorRT plan)
    BUNDLE/engines/<component>.<precision>.engine.json   its sidecar (see :func:`make_sidecar`)

A TensorRT engine only runs on the TensorRT version that built it and is tuned for one GPU
model (TensorRT developer guide, "Serialized engines are not portable across platforms or
TensorRT versions"), and it bakes in the graph's weights. The sidecar records all three
(graph sha256, TensorRT version, GPU name and compute capability), so that the runtime
refuses a stale engine with a message saying how to rebuild it instead of crashing or
silently running it, and so that ``svdtrt build`` reuses an engine whose inputs have not
changed. Nothing here imports TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .. import __version__
from ..bundle import write_bytes_atomic, write_json_atomic
from ..errors import EngineError

ENGINE_DIR = "engines"
#: Bumped when the sidecar's fields change meaning; other versions are treated as stale.
SIDECAR_VERSION = 1


def engine_path(bundle_path: Path, component: str, precision: str) -> Path:
    """``BUNDLE/engines/<component>.<precision>.engine``."""
    return Path(bundle_path) / ENGINE_DIR / f"{component}.{precision}.engine"


def sidecar_path(engine: Path) -> Path:
    """The sidecar beside ``engine``: the engine's file name plus ``.json``."""
    return engine.with_name(engine.name + ".json")


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks (a full-size fp32 SVD UNet is about 6 GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def graph_sha256(bundle, component: str, precision: str) -> str:
    """One sha256 over a graph and its external-data file, as the manifest lists them.

    The weights live in the data file, and an engine bakes them in, so both count.

    Raises:
        BundleError: the bundle has no such graph.
    """
    graph = bundle.graph_path(component, precision)
    entry = bundle.manifest["components"][component]["graphs"][precision]
    h = hashlib.sha256()
    for name in (graph.name, entry.get("data")):
        if name:
            h.update(f"{name}:{sha256_file(bundle.path / name)}\n".encode())
    return h.hexdigest()


def make_sidecar(component: str, precision: str, graph: str, graph_sha: str, engine: bytes, profile: dict,
                 profile_kind: str, flags: dict, tensorrt: str, gpu: dict, build_seconds: float) -> dict:
    """The sidecar of a freshly built engine.

    Args:
        component, precision: what was built.
        graph, graph_sha: the graph's file name and :func:`graph_sha256`.
        engine: the serialized engine (its size and sha256 are recorded).
        profile: ``{input: {"min", "opt", "max"}}`` of the engine's one optimization profile.
        profile_kind: ``"static"`` or ``"dynamic"``.
        flags: the builder settings (the ``flags`` of :func:`svdtrt.export.engine.plan_build`).
        tensorrt: ``tensorrt.__version__`` of the builder.
        gpu: ``{"name", "compute_capability", ...}`` of the building GPU (:func:`svdtrt.gpu.cuda_device`).
        build_seconds: wall-clock build time in seconds.
    """
    return {
        "sidecar_version": SIDECAR_VERSION,
        "component": component, "precision": precision,
        "graph": {"file": graph, "sha256": graph_sha},
        "engine": {"bytes": len(engine), "sha256": hashlib.sha256(engine).hexdigest()},
        "profile_kind": profile_kind, "profile": profile, "flags": flags,
        "tensorrt": tensorrt,
        "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "build_seconds": round(build_seconds, 3),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "svdtrt": __version__,
    }


def read_sidecar(engine: Path) -> dict | None:
    """The sidecar of ``engine``, or None when it (or the engine) is missing or unreadable."""
    try:
        if not engine.is_file():
            return None
        sidecar = json.loads(sidecar_path(engine).read_text())
        return sidecar if isinstance(sidecar, dict) else None
    except (OSError, ValueError):
        return None


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


def rebuild_command(bundle_path: Path, component: str, precision: str, profile_kind: str | None = None) -> str:
    """The ``svdtrt build`` command line that rebuilds one engine."""
    profile = f" --profile {profile_kind}" if profile_kind else ""
    return f"svdtrt build {bundle_path} --precision {precision}{profile} --components {component}"


def usable_engine(bundle, component: str, precision: str, tensorrt: str, gpu: dict) -> tuple[Path, dict]:
    """The engine of ``component`` at ``precision`` and its sidecar, checked for this machine.

    Hashes the graph (seconds for a full-size UNet) to make sure the engine was built from it.

    Raises:
        EngineError: the engine is missing, has no sidecar, or was built from another graph,
            for another GPU or with another TensorRT version; the message lists why and gives
            the ``svdtrt build`` command that rebuilds it.
        BundleError: the bundle has no graph of that precision.
    """
    engine = engine_path(bundle.path, component, precision)
    sidecar = read_sidecar(engine)
    if sidecar is None:
        raise EngineError(f"no {precision} engine for {component} in '{bundle.path}' ({engine.name} or its "
                          f"sidecar is missing); build it with '{rebuild_command(bundle.path, component, precision)}'")
    expected = {"graph_sha256": graph_sha256(bundle, component, precision), "precision": precision,
                "tensorrt": tensorrt, "gpu": gpu}
    reasons = stale_reasons(sidecar, expected)
    if reasons:
        raise EngineError(f"the {component} engine {engine.name} is stale: {'; '.join(reasons)}; rebuild it with "
                          f"'{rebuild_command(bundle.path, component, precision, sidecar.get('profile_kind'))}'")
    return engine, sidecar


def read_engine_bytes(engine: Path, sidecar: dict) -> bytes:
    """The serialized engine, checked against the size and sha256 its sidecar records.

    Raises:
        EngineError: the file differs from the one that was built (truncated copy, replaced file).
    """
    data = engine.read_bytes()
    recorded = sidecar.get("engine", {})
    if len(data) != recorded.get("bytes") or hashlib.sha256(data).hexdigest() != recorded.get("sha256"):
        rebuild = rebuild_command(engine.parent.parent, sidecar.get("component", "?"), sidecar.get("precision", "?"),
                                  sidecar.get("profile_kind"))
        raise EngineError(f"{engine} is not the engine its sidecar describes (size or sha256 differ: a partial "
                          f"copy or a replaced file); rebuild it with '{rebuild}'")
    return data


def save_engine(engine: Path, data: bytes, sidecar: dict) -> None:
    """Write an engine and its sidecar so that a crash never leaves a sidecar vouching for the
    wrong engine: the old sidecar goes first, the new one is written last (both atomically)."""
    engine.parent.mkdir(parents=True, exist_ok=True)
    sidecar_path(engine).unlink(missing_ok=True)
    write_bytes_atomic(engine, data)
    write_json_atomic(sidecar_path(engine), sidecar)


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
                              f"profile (min {lo}, max {hi}); rebuild for this shape, e.g. '{rebuild}' with "
                              "--frames/--height/--width, or use --profile dynamic")
