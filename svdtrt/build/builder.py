"""Building TensorRT engines from a bundle's graphs, through Polygraphy's loaders, in one
bundle transaction: every engine and sidecar of a build appears together, or none does.

Polygraphy and TensorRT are imported only when :func:`build_engines` runs.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..bundle.engines import NO_ENGINE, BuildFlags, SidecarError, dump_sidecar, load_sidecar, make_sidecar, stale_reasons
from ..bundle.manifest import EngineEntry
from ..bundle.store import changing
from ..errors import BundleError, EngineError, first_line
from .plan import BuildPlan, EnginePlan, Profile, check_precision_supported

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltEngine:
    """One engine of a build: where it is, whether a current one was reused, its build time in
    seconds (0 when reused) and its size in bytes."""

    engine: Path
    reused: bool
    seconds: float
    bytes: int


def default_timing_cache(tensorrt: str, gpu: dict) -> Path:
    """The timing cache a build uses unless ``--timing-cache`` names one: one file per TensorRT
    version and GPU model (a timing cache is valid for that pair only) in svdtrt's folder of the
    user's cache (:func:`svdtrt.environment.cache_dir`), so that every build on a machine reuses
    the tactics timed before, component by component and bundle by bundle."""
    from ..environment import cache_dir

    gpu_name = re.sub(r"[^A-Za-z0-9.]+", "-", gpu["name"]).strip("-")
    return cache_dir() / "tensorrt-timing" / f"{tensorrt}-{gpu_name}-sm{gpu['compute_capability']}.cache"


def _reuse_reasons(bundle, name: str, precision: str, expected: dict) -> list[str]:
    """Why the bundle's current engine of ``name`` may not be reused for ``expected`` (the
    sidecar fields of :func:`svdtrt.bundle.engines.stale_reasons`); empty if it may. The engine
    file is checked against its recorded sha256 last, once per file version (``Bundle.check_file``)."""
    current = bundle.manifest.engines.get(f"{name}.{precision}")
    if current is None:
        return [NO_ENGINE]
    try:
        reasons = stale_reasons(load_sidecar(bundle.path / current.sidecar), expected)
    except SidecarError as e:
        return [str(e)]
    if not reasons:
        try:
            bundle.check_file(current.engine)
        except BundleError:  # missing (a bundle being repaired) or not the recorded bytes
            reasons = ["the engine file is missing or does not match its recorded sha256"]
    return reasons


def _verify_graph(bundle, item: EnginePlan) -> None:
    """Hash the graph and weights a build reads against the manifest (an engine bakes them in),
    through :meth:`~svdtrt.bundle.store.Bundle.check_file`: once per file version, however many
    engines read it."""
    for file in (item.graph, item.data):
        if file:
            bundle.check_file(file)


def build_engines(bundle_path, plan: BuildPlan, force: bool = False, progress: bool = True) -> dict[str, BuiltEngine]:
    """Build (or reuse) the engines of ``plan`` and publish them with their sidecars.

    An engine is reused when its sidecar matches the graph's identity, the precision, the
    optimization profile, the builder settings that shape an engine (:meth:`BuildFlags.engine_settings`),
    the TensorRT version and the GPU, and the engine file still has the sha256 the manifest
    records; otherwise it is rebuilt. Files are hashed once per version (``Bundle.check_file``):
    a weights file that several graphs share (``unet_full`` and ``unet_shallow`` read the UNet's)
    is hashed once per build, and only a graph an engine is built from is hashed at all.

    Args:
        bundle_path: the bundle the plan was made for.
        plan: from :func:`svdtrt.build.plan.plan_build`.
        force: rebuild even engines that could be reused.
    Returns:
        ``{component: BuiltEngine}`` in the plan's order.
    Raises:
        BackendUnavailableError: no TensorRT (10.3 or later), Polygraphy or CUDA GPU here.
        InputError: a precision the GPU has no tensor cores for.
        BundleError: a graph no longer matches its recorded hash.
        EngineError: TensorRT could not parse a graph or build an engine.
    """
    from tqdm import tqdm

    from ..environment import cuda_device, quiet_polygraphy, require_tensorrt

    trt = require_tensorrt("svdtrt build")
    quiet_polygraphy()
    gpu = cuda_device()
    precision = plan.precision
    check_precision_supported(precision, gpu)
    # The cache is written next to the bundle, never into it (plan_build refuses a path inside it).
    flags = plan.flags if plan.flags.timing_cache else plan.flags.model_copy(
        update={"timing_cache": str(default_timing_cache(trt.__version__, gpu))})
    Path(flags.timing_cache).parent.mkdir(parents=True, exist_ok=True)
    results = {}
    with changing(bundle_path) as staged:
        bundle = staged.old
        for name, item in tqdm(plan.components.items(), desc="build", unit="engine", disable=not progress):
            _verify_graph(bundle, item)
            graph_sha = bundle.graph_identity(name, precision)
            expected = {"graph_sha256": graph_sha, "precision": precision, "tensorrt": trt.__version__,
                        "gpu": gpu, "profile_kind": plan.profile, "profile": item.profile, "flags": flags}
            reasons = _reuse_reasons(bundle, name, precision, expected)
            if not reasons and not force:
                current = bundle.manifest.engines[f"{name}.{precision}"]
                log.info("%s: reusing %s (same graph, profile, builder settings, TensorRT and GPU)", name,
                         current.engine)
                results[name] = BuiltEngine(bundle.path / current.engine, reused=True, seconds=0.0,
                                            bytes=bundle.manifest.files[current.engine].bytes)
                continue
            for file in (item.graph, item.data):  # an engine bakes them in
                if file:
                    bundle.check_file(file)
            log.info("%s: building %s because %s", name, item.engine, "; ".join(reasons) or "--force")
            start = time.perf_counter()
            data = _build_serialized(trt, bundle.path / item.graph, item.profile, flags)
            seconds = time.perf_counter() - start
            sidecar = make_sidecar(name, precision, item.graph, graph_sha, data, item.profile, plan.profile,
                                   flags, trt.__version__, gpu, seconds, shapes=plan.shapes)
            engine = staged.path / item.engine
            engine.parent.mkdir(parents=True, exist_ok=True)
            staged.remove(item.engine)
            engine.write_bytes(data)
            staged.write_json(item.sidecar, dump_sidecar(sidecar))
            staged.manifest.engines[f"{name}.{precision}"] = EngineEntry(
                component=name, precision=precision, engine=item.engine, sidecar=item.sidecar)
            results[name] = BuiltEngine(Path(bundle_path) / item.engine, reused=False, seconds=seconds,
                                        bytes=len(data))
        staged.commit()
    return results


def engine_loader(trt, graph: Path, profile: Profile, flags: BuildFlags):
    """The Polygraphy loader chain that builds one engine, not yet run (Polygraphy's loaders are
    lazy, so this needs no GPU): ``EngineBytesFromNetwork(NetworkFromOnnxPath(graph,
    strongly_typed=...), config=CreateConfig(profiles=[Profile with the plan's min/opt/max],
    tf32=..., memory_pool_limits=..., load_timing_cache=...), save_timing_cache=...)``.

    Args:
        trt: the ``tensorrt`` module (read only for ``MemoryPoolType`` when a workspace is set).
        graph: the ONNX graph; profile: ``{input: {"min", "opt", "max"}}``; flags: the plan's.
    """
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    trt_profile = Profile()
    for name, shapes in profile.items():
        trt_profile.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    pools = {trt.MemoryPoolType.WORKSPACE: flags.workspace_bytes} if flags.workspace_bytes else None
    config = CreateConfig(profiles=[trt_profile], memory_pool_limits=pools, tf32=flags.tf32,
                          load_timing_cache=flags.timing_cache)
    network = NetworkFromOnnxPath(str(graph), strongly_typed=flags.strongly_typed)
    return EngineBytesFromNetwork(network, config=config, save_timing_cache=flags.timing_cache)


def _build_serialized(trt, graph: Path, profile: Profile, flags: BuildFlags) -> bytes:
    """One engine through Polygraphy's loaders (:func:`engine_loader`): strongly typed network,
    one optimization profile."""
    from polygraphy.exception import PolygraphyException

    try:
        data = engine_loader(trt, graph, profile, flags)()
    except PolygraphyException as e:
        raise EngineError(f"TensorRT could not build an engine from {graph.name}: {first_line(e)}; "
                          "rerun with -v for TensorRT's log") from None
    return bytes(data)
