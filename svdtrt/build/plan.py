"""Build plans: which engine each component gets, with its optimization profile (pure data).

Precision lives in the graph (docs/architecture.md, "Precisions"): every engine is built from
the bundle's ``<component>.<precision>.onnx`` as a *strongly typed* network, with no builder
precision flags. That is the only mode TensorRT 11 has (it removed the fp16/int8/fp8 builder
flags and the int8 calibrator) and TensorRT 10.x supports it
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), so one code path serves JetPack 6.1+
(TensorRT 10.3), JetPack 7 (10.13) and workstations on 11.x. TF32 is left off (Polygraphy's
``CreateConfig`` default), so an fp32 engine computes in fp32. Nothing here needs TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..bundle.engines import BuildFlags, engine_name, sidecar_name
from ..errors import InputError
from ..precisions import precision as lookup_precision
from ..specs import (
    CACHING_COMPONENTS,
    COMPONENTS,
    SVD_COMPONENTS,
    Range,
    component,
    profile_shapes,
)

PROFILE_KINDS = ("static", "dynamic")

#: An optimization profile: ``{input: {"min": shape, "opt": shape, "max": shape}}``.
Profile = dict[str, dict[str, list[int]]]


@dataclass(frozen=True)
class EnginePlan:
    """One engine of a plan: the graph it is built from and where it goes (paths relative to the
    bundle), and its one optimization profile."""

    graph: str
    data: str | None
    engine: str
    sidecar: str
    profile: Profile


@dataclass(frozen=True)
class BuildPlan:
    """What ``svdtrt build`` builds (:func:`plan_build`).

    Attributes:
        bundle: the bundle's path.
        precision: the graphs' precision (engines are strongly typed: it comes from the graphs).
        profile: ``"static"`` or ``"dynamic"``.
        shapes: the clip-size ranges ``{"frames"|"height"|"width": {"min", "opt", "max"}}``.
        flags: the builder settings.
        components: ``{component: EnginePlan}``, in build order.
    """

    bundle: str
    precision: str
    profile: str
    shapes: dict[str, dict[str, int]]
    flags: BuildFlags
    components: dict[str, EnginePlan]


def plan_build(bundle, precision: str, profile: str = "dynamic", frames: Range | None = None,
               height: Range | None = None, width: Range | None = None,
               components: list[str] | None = None, workspace_gb: float | None = None,
               timing_cache: str | Path | None = None, block_caching: bool = False) -> BuildPlan:
    """What ``svdtrt build`` will build: one engine per component, with its optimization profile.

    Args:
        bundle: the opened :class:`svdtrt.bundle.store.Bundle`.
        precision: a precision of :mod:`svdtrt.precisions`; the bundle must have its graphs.
        profile: ``"dynamic"``: each input's min/opt/max; ``"static"``: min = opt = max = the
            optimal shape (fastest, one clip size only), except the UNet graphs' batch, which
            keeps 1 .. 2 (``spec.batch``) so that guidance truncation's batch-1 calls run on
            the same engine (:func:`static_profile`).
        frames, height, width: (min, opt, max) overrides of the bundle's clip-size ranges
            (frames; pixels); any left None keeps the manifest's ``shapes``. Without overrides
            the manifest's per-input profiles are used as they are.
        components: which components (default: SVD's four, :data:`svdtrt.specs.SVD_COMPONENTS`,
            what a clip without block caching runs).
        workspace_gb: TensorRT workspace memory-pool limit in GiB (None: TensorRT's default,
            the device's memory).
        timing_cache: a tactic timing-cache file, read if present and updated after each build;
            None: the build's default, one per TensorRT version and GPU in the user's cache
            (:func:`svdtrt.build.builder.default_timing_cache`). Never inside the bundle, which
            changes only in transactions that keep exactly the files its manifest lists.
        block_caching: also build the block-caching graphs (``unet_full``, ``unet_shallow``:
            what ``--cache-interval`` above 1 runs; each engine holds its own copy of the
            weights it uses, docs/tensorrt.md, "Block caching").
    Returns:
        The plan; its profiles' shapes include the classifier-free-guidance batch (B = 2 for the
        UNet's opt and max).
    Raises:
        InputError: unknown precision, profile kind or component; a size the model cannot take;
            a non-positive workspace; a timing cache inside the bundle.
        BundleError: the bundle lacks a graph of ``precision`` (the message names the command
            that creates it).
    """
    lookup_precision(precision)
    if profile not in PROFILE_KINDS:
        raise InputError(f"unknown profile '{profile}': choose static or dynamic")
    if workspace_gb is not None and not workspace_gb > 0:
        raise InputError(f"the workspace must be a positive number of GiB, got {workspace_gb}")
    names = [component(n).name for n in components or SVD_COMPONENTS]
    if block_caching:
        names += [n for n in CACHING_COMPONENTS if n not in names]
    if timing_cache is not None and Path(timing_cache).resolve().is_relative_to(Path(bundle.path).resolve()):
        raise InputError(f"the timing cache '{timing_cache}' is inside the bundle, where a build would not keep "
                         "it (a bundle holds only the files its manifest lists); give a path outside it, or leave "
                         "--timing-cache out to use svdtrt's own in the user's cache")

    recorded = bundle.manifest.shapes
    shapes = {k: getattr(recorded, k).as_tuple() for k in ("frames", "height", "width")}
    overridden = any(r is not None for r in (frames, height, width))
    shapes.update({k: tuple(v) for k, v in (("frames", frames), ("height", height), ("width", width)) if v})
    for i in range(3):
        bundle.dims.check_size(shapes["frames"][i], shapes["height"][i], shapes["width"][i])
    if profile == "static":  # one shape: the optimal one
        shapes = {k: (v[1],) * 3 for k, v in shapes.items()}

    plan_components = {}
    for name in names:
        graph = bundle.graph(name, precision)
        entry = bundle.manifest.components[name]
        if overridden or profile == "static":
            shapes_by_input = profile_shapes(COMPONENTS[name], bundle.dims, shapes["frames"],
                                             shapes["height"], shapes["width"])
        else:
            shapes_by_input = {k: v.model_dump() for k, v in entry.profile.items()}
        if profile == "static":
            shapes_by_input = static_profile(COMPONENTS[name], shapes_by_input)
        engine = engine_name(name, precision)
        plan_components[name] = EnginePlan(
            graph=graph.file, data=graph.data, engine=engine, sidecar=sidecar_name(engine),
            profile={k: {key: list(v[key]) for key in ("min", "opt", "max")} for k, v in shapes_by_input.items()})
    return BuildPlan(
        bundle=str(bundle.path), precision=precision, profile=profile,
        shapes={k: dict(zip(("min", "opt", "max"), v)) for k, v in shapes.items()},
        # precision comes from the graph: strongly typed, no builder precision flags (BuildFlags)
        flags=BuildFlags(workspace_bytes=None if workspace_gb is None else int(workspace_gb * 2**30),
                         timing_cache=None if timing_cache is None else str(timing_cache)),
        components=plan_components)


def static_profile(spec, profile: dict) -> dict:
    """A static optimization profile from ``profile`` (``{input: {"min", "opt", "max"}}``): every
    axis at its optimal size, except the batch axis (symbol ``B``) of a component whose batch varies
    (``spec.batch``, the UNet graphs: 2 with classifier-free guidance, 1 after ``--guidance-steps``),
    which keeps its min and max. TensorRT picks its kernels for the optimal shape either way, and
    the TensorRT backend captures one CUDA graph per batch (:func:`svdtrt.runtime.backends.trt.is_static`)."""
    static = {}
    for t in spec.inputs:
        opt = list(profile[t.name]["opt"])
        static[t.name] = {key: [profile[t.name][key][i] if symbol == "B" else size for i, (symbol, size)
                                in enumerate(zip(t.dims, opt))] for key in ("min", "opt", "max")}
    return static


def check_precision_supported(precision: str, gpu: dict) -> None:
    """Refuse precisions the GPU has no tensor cores for (the registry's ``min_compute_capability``).

    Raises:
        InputError: e.g. fp8 on Jetson Orin (8.7) or an A100 (8.0).
    """
    need = lookup_precision(precision).min_compute_capability
    have = tuple(int(x) for x in gpu["compute_capability"].split("."))
    if need and have < need:
        raise InputError(f"{precision} needs compute capability {need[0]}.{need[1]} or higher; {gpu['name']} "
                         f"has {gpu['compute_capability']}; build int8 or fp16 engines instead")
