"""TensorRT engines from a bundle's graphs: the build plan (pure data) and the build (Polygraphy).

Precision lives in the graph (DESIGN.md): every engine is built from the bundle's
``<component>.<precision>.onnx`` as a *strongly typed* network, with no builder precision
flags. That is the only mode TensorRT 11 has (it removed the fp16/int8/fp8 builder flags and
the int8 calibrator) and TensorRT 10.x supports it (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``),
so one code path serves JetPack 6.1+ (TensorRT 10.3), JetPack 7 (10.13) and workstations on 11.x.
TF32 is left off (Polygraphy's ``CreateConfig`` default), so an fp32 engine computes in fp32.

:func:`plan_build` needs neither TensorRT nor a GPU; :func:`build_engines` imports Polygraphy
and TensorRT only when called.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..bundle import write_json_atomic
from ..errors import BundleError, EngineError, InputError, first_line
from ..specs import COMPONENTS, Range, component, profile_shapes
from . import engine_cache

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "fp8")
PROFILE_KINDS = ("static", "dynamic")

#: The command that creates each precision's graphs, for the "missing graph" message.
_GRAPH_MAKERS = {
    "fp32": "svdtrt export MODEL --out {bundle}",
    "fp16": "svdtrt export --precision fp16",
    "int8": "svdtrt quantize {bundle} --precision int8",
    "fp8": "svdtrt quantize {bundle} --precision fp8",
}

#: FP8 tensor cores start at compute capability 8.9 (Ada; Hopper is 9.0). Jetson AGX Orin is 8.7.
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)

PLAN_FILE = "build-plan.{precision}.json"


def plan_build(bundle, precision: str, profile: str = "dynamic", frames: Range | None = None,
               height: Range | None = None, width: Range | None = None,
               components: list[str] | None = None, workspace_gb: float | None = None,
               timing_cache: str | Path | None = None) -> dict:
    """What ``svdtrt build`` will build: one engine per component, with its optimization profile.

    Args:
        bundle: the opened :class:`svdtrt.bundle.Bundle`.
        precision: one of :data:`PRECISIONS`; the bundle must have graphs of that precision.
        profile: ``"dynamic"``: each input's min/opt/max; ``"static"``: min = opt = max = the
            optimal shape (fastest, one shape only).
        frames, height, width: (min, opt, max) overrides of the bundle's clip-size ranges
            (frames; pixels); any left None keeps the bundle's ``manifest["shapes"]``. Without
            overrides the manifest's per-input profiles are used as they are.
        components: which components (default all four).
        workspace_gb: TensorRT workspace memory-pool limit in GiB (None: TensorRT's default,
            the device's memory).
        timing_cache: a tactic timing-cache file, read if present and updated after each build.
    Returns:
        A JSON-serialisable plan: ``{"bundle", "precision", "profile", "shapes", "flags",
        "components": {name: {"graph", "data", "engine", "sidecar", "profile": {input:
        {"min", "opt", "max"}}}}}``; shapes include the classifier-free-guidance batch (B = 2
        for the UNet's opt and max).
    Raises:
        InputError: unknown precision, profile kind or component; a size the model cannot take;
            a non-positive workspace.
        BundleError: the bundle lacks a graph of ``precision`` (the message names the command
            that creates it).
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': choose from {', '.join(PRECISIONS)}")
    if profile not in PROFILE_KINDS:
        raise InputError(f"unknown profile '{profile}': choose static or dynamic")
    if workspace_gb is not None and not workspace_gb > 0:
        raise InputError(f"the workspace must be a positive number of GiB, got {workspace_gb}")
    names = [component(n).name for n in components or COMPONENTS]

    shapes = {k: (v["min"], v["opt"], v["max"]) for k, v in bundle.manifest["shapes"].items()}
    overridden = any(r is not None for r in (frames, height, width))
    shapes.update({k: tuple(v) for k, v in (("frames", frames), ("height", height), ("width", width)) if v})
    for i in range(3):
        bundle.dims.check_size(shapes["frames"][i], shapes["height"][i], shapes["width"][i])
    if profile == "static":  # one shape: the optimal one
        shapes = {k: (v[1],) * 3 for k, v in shapes.items()}

    plan_components = {}
    for name in names:
        entry = bundle.manifest["components"].get(name, {})
        graphs = entry.get("graphs", {})
        if precision not in graphs:
            maker = _GRAPH_MAKERS[precision].format(bundle=bundle.path)
            raise BundleError(f"bundle '{bundle.path}' has no {precision} graph for {name} "
                              f"(has: {', '.join(graphs) or 'none'}); create it first with '{maker}'")
        if overridden or profile == "static" or "profile" not in entry:
            shapes_by_input = profile_shapes(COMPONENTS[name], bundle.dims, shapes["frames"],
                                             shapes["height"], shapes["width"])
        else:
            shapes_by_input = entry["profile"]
        if profile == "static":
            shapes_by_input = {k: {key: list(v["opt"]) for key in ("min", "opt", "max")}
                               for k, v in shapes_by_input.items()}
        engine = engine_cache.engine_path(bundle.path, name, precision)
        plan_components[name] = {
            "graph": graphs[precision]["file"], "data": graphs[precision].get("data"),
            "engine": str(engine.relative_to(bundle.path)),
            "sidecar": str(engine_cache.sidecar_path(engine).relative_to(bundle.path)),
            "profile": {k: {key: list(v[key]) for key in ("min", "opt", "max")} for k, v in shapes_by_input.items()},
        }
    return {
        "bundle": str(bundle.path), "precision": precision, "profile": profile,
        "shapes": {k: dict(zip(("min", "opt", "max"), v)) for k, v in shapes.items()},
        "flags": {
            "strongly_typed": True,
            "builder_precision_flags": [],  # precision comes from the graph (TensorRT 11 has none)
            "tf32": False,
            "workspace_bytes": None if workspace_gb is None else int(workspace_gb * 2**30),
            "timing_cache": None if timing_cache is None else str(timing_cache),
        },
        "components": plan_components,
    }


def save_plan(bundle, plan: dict) -> Path:
    """Write ``plan`` to ``BUNDLE/engines/build-plan.<precision>.json`` (atomically); returns the path."""
    path = Path(bundle.path) / engine_cache.ENGINE_DIR / PLAN_FILE.format(precision=plan["precision"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, plan)
    return path


def check_precision_supported(precision: str, gpu: dict) -> None:
    """Refuse precisions the GPU has no tensor cores for (fp8 below compute capability 8.9).

    Raises:
        InputError: fp8 on, e.g., Jetson Orin (8.7) or an A100 (8.0).
    """
    major, minor = (int(x) for x in gpu["compute_capability"].split("."))
    if precision == "fp8" and (major, minor) < FP8_MIN_COMPUTE_CAPABILITY:
        raise InputError(f"fp8 needs compute capability 8.9 or higher (Ada, Hopper, Blackwell); {gpu['name']} "
                         f"has {gpu['compute_capability']}; build int8 or fp16 engines instead")


def build_engines(bundle, plan: dict, force: bool = False, progress: bool = True) -> dict[str, dict]:
    """Build (or reuse) the engines of ``plan`` and write them with their sidecars.

    An engine is reused when its sidecar matches the graph's sha256, the precision, the
    optimization profile, the TensorRT version and the GPU; otherwise it is rebuilt and
    replaced atomically.

    Args:
        bundle: the opened bundle the plan was made for.
        plan: from :func:`plan_build`.
        force: rebuild even engines that could be reused.
    Returns:
        ``{component: {"engine": path, "reused": bool, "seconds": build seconds, "bytes": size}}``.
    Raises:
        BackendUnavailableError: no TensorRT, Polygraphy or CUDA GPU here.
        InputError: fp8 on a GPU without fp8 tensor cores.
        EngineError: TensorRT could not parse a graph or build an engine.
    """
    from tqdm import tqdm

    from ..gpu import cuda_device, quiet_polygraphy, require_tensorrt

    trt = require_tensorrt("svdtrt build")
    quiet_polygraphy()
    gpu = cuda_device()
    check_precision_supported(plan["precision"], gpu)
    results = {}
    for name, item in tqdm(plan["components"].items(), desc="build", unit="engine", disable=not progress):
        engine = bundle.path / item["engine"]
        graph_sha = engine_cache.graph_sha256(bundle, name, plan["precision"])
        expected = {"graph_sha256": graph_sha, "precision": plan["precision"], "tensorrt": trt.__version__,
                    "gpu": gpu, "profile_kind": plan["profile"], "profile": item["profile"]}
        reasons = engine_cache.stale_reasons(engine_cache.read_sidecar(engine), expected)
        if not reasons and not force:
            log.info("%s: reusing %s (same graph, profile, TensorRT and GPU)", name, engine)
            results[name] = {"engine": str(engine), "reused": True, "seconds": 0.0, "bytes": engine.stat().st_size}
            continue
        log.info("%s: building %s because %s", name, engine, "; ".join(reasons) or "--force")
        start = time.perf_counter()
        data = _build_serialized(trt, bundle.path / item["graph"], item["profile"], plan["flags"])
        seconds = time.perf_counter() - start
        sidecar = engine_cache.make_sidecar(name, plan["precision"], item["graph"], graph_sha, data, item["profile"],
                                            plan["profile"], plan["flags"], trt.__version__, gpu, seconds)
        engine_cache.save_engine(engine, data, sidecar)
        results[name] = {"engine": str(engine), "reused": False, "seconds": seconds, "bytes": len(data)}
    return results


def _build_serialized(trt, graph: Path, profile: dict, flags: dict) -> bytes:
    """One engine through Polygraphy's loaders: strongly typed network, one optimization profile."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    trt_profile = Profile()
    for name, shapes in profile.items():
        trt_profile.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
    pools = ({trt.MemoryPoolType.WORKSPACE: flags["workspace_bytes"]} if flags.get("workspace_bytes") else None)
    config = CreateConfig(profiles=[trt_profile], memory_pool_limits=pools, tf32=flags.get("tf32", False),
                          load_timing_cache=flags.get("timing_cache"))
    network = NetworkFromOnnxPath(str(graph), strongly_typed=flags.get("strongly_typed", True))
    try:
        data = EngineBytesFromNetwork(network, config=config, save_timing_cache=flags.get("timing_cache"))()
    except PolygraphyException as e:
        raise EngineError(f"TensorRT could not build an engine from {graph.name}: {first_line(e)}; "
                          "rerun with -v for TensorRT's log") from None
    return bytes(data)
