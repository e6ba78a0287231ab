"""Engine sidecars, the cache and staleness, on CPU: sidecars and engine bytes are made here,
and the TensorRT build itself is replaced by a recorder of what would have been built."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import onnx
import pytest

import svdtrt.environment
from svdtrt.build import builder as builder_module
from svdtrt.build.builder import build_engines
from svdtrt.build.plan import plan_build
from svdtrt.bundle import engines as cache
from svdtrt.bundle.integrity import verify_bundle
from svdtrt.bundle.manifest import EngineEntry
from svdtrt.bundle.store import Bundle, changing
from svdtrt.errors import BundleError, EngineError

from ..helpers import rerecord

ORIN = {"name": "Orin", "compute_capability": "8.7"}
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return Bundle.open(shutil.copytree(tiny_bundle.path, tmp_path / "tiny"))


def _save_fake_engine(bundle, component="unet", precision="fp32", tensorrt="10.3.0", gpu=ORIN,
                      data=b"not a real engine, but bytes all the same"):
    """Add a fake engine and its sidecar to the bundle in a transaction; returns (re-opened bundle,
    engine path, engine bytes)."""
    engine = cache.engine_name(component, precision)
    profile = {k: v.model_dump() for k, v in bundle.manifest.components[component].profile.items()}
    sidecar = cache.make_sidecar(component, precision, f"{component}.{precision}.onnx",
                                 bundle.graph_identity(component, precision), data, profile, "dynamic",
                                 {"strongly_typed": True}, tensorrt, gpu, 1.25)
    with changing(bundle.path) as staged:
        (staged.path / engine).parent.mkdir(parents=True, exist_ok=True)
        (staged.path / engine).write_bytes(data)
        staged.write_json(cache.sidecar_name(engine), cache.dump_sidecar(sidecar))
        staged.manifest.engines[f"{component}.{precision}"] = EngineEntry(
            component=component, precision=precision, engine=engine, sidecar=cache.sidecar_name(engine))
        bundle = staged.commit()
    return bundle, bundle.path / engine, data


def test_sidecar_records_what_the_engine_depends_on(bundle):
    bundle, engine, data = _save_fake_engine(bundle)
    path, sidecar = cache.usable_engine(bundle, "unet", "fp32", "10.3.0", ORIN)
    assert path == engine == bundle.path / "engines" / "unet.fp32.engine"
    assert sidecar.graph.sha256 == bundle.graph_identity("unet", "fp32")
    assert sidecar.precision == "fp32" and sidecar.tensorrt == "10.3.0"
    assert sidecar.gpu.model_dump() == {"name": "Orin", "compute_capability": "8.7"}
    assert sidecar.profile_lists() == {k: v.model_dump()
                                  for k, v in bundle.manifest.components["unet"].profile.items()}
    assert sidecar.build_seconds == 1.25 and sidecar.built
    # the engine is a bundle file: the manifest records the bytes the sidecar describes
    record = bundle.manifest.files["engines/unet.fp32.engine"]
    assert sidecar.engine.model_dump() == {"bytes": record.bytes, "sha256": record.sha256}
    assert path.read_bytes() == data
    assert verify_bundle(bundle.path) == []


def test_graph_hash_covers_the_weights(bundle):
    before = bundle.graph_identity("unet", "fp32")
    data = bundle.path / bundle.manifest.components["unet"].graphs["fp32"].data
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    # a changed weights file is noticed (same size: by 'svdtrt verify'), naming the file
    assert any(p.startswith("unet.fp32.onnx.data: sha256 differs") for p in verify_bundle(bundle.path))
    # and the graph's identity, from the manifest's records, covers the weights file
    changed = rerecord(bundle.path, data.name)
    assert changed.graph_identity("unet", "fp32") != before


def test_engine_from_another_graph_is_refused_with_rebuild_command(bundle):
    bundle, _, _ = _save_fake_engine(bundle)
    graph = bundle.graph_path("unet", "fp32")
    model = onnx.load(graph, load_external_data=False)
    model.doc_string = "re-exported"
    onnx.save(model, graph)
    bundle = rerecord(bundle.path, graph.name)  # the graph replaced as a whole, manifest included
    with pytest.raises(EngineError) as e:
        cache.usable_engine(bundle, "unet", "fp32", "10.3.0", ORIN)
    message = str(e.value)
    assert "stale" in message and "another graph" in message
    assert f"svdtrt build {bundle.path} --precision fp32 --profile dynamic --components unet --force" in message
    assert "\n" not in message


def test_engine_for_another_gpu_is_refused(bundle):
    bundle, _, _ = _save_fake_engine(bundle, gpu=H100)
    with pytest.raises(EngineError, match=r"built on a NVIDIA H100 80GB HBM3 \(compute capability 9.0\), "
                                          r"this is a Orin \(compute capability 8.7\).*rebuild it with 'svdtrt build"):
        cache.usable_engine(bundle, "unet", "fp32", "10.3.0", ORIN)


def test_engine_from_another_tensorrt_version_is_refused(bundle):
    bundle, _, _ = _save_fake_engine(bundle, tensorrt="10.3.0")
    with pytest.raises(EngineError, match=r"built with TensorRT 10.3.0, this is 10.13.0.*rebuild it with"):
        cache.usable_engine(bundle, "unet", "fp32", "10.13.0", ORIN)


def test_missing_engine_or_sidecar_says_how_to_build(bundle):
    with pytest.raises(EngineError, match=r"no fp32 engine for unet.*svdtrt build .* --precision fp32 --components unet"):
        cache.usable_engine(bundle, "unet", "fp32", "10.3.0", ORIN)
    bundle, engine, _ = _save_fake_engine(bundle)
    (bundle.path / cache.sidecar_name("engines/unet.fp32.engine")).unlink()
    with pytest.raises(EngineError, match=r"no fp32 engine for unet.*svdtrt build .* --precision fp32 --components unet"):
        cache.usable_engine(bundle, "unet", "fp32", "10.3.0", ORIN)  # opened before the sidecar went
    with pytest.raises(BundleError, match=r"engines/unet.fp32.engine.json is missing; repair it with "
                                          r"'svdtrt build .* --precision fp32 --components unet'"):
        Bundle.open(bundle.path)


def test_engine_bytes_that_differ_from_the_sidecar_are_refused(bundle):
    bundle, engine, data = _save_fake_engine(bundle)
    engine.write_bytes(data[:-3])  # e.g. a partial copy to the device
    with pytest.raises(BundleError, match=r"engines/unet.fp32.engine has \d+ bytes, the manifest records \d+ .*"
                                          r"repair it with 'svdtrt build .* --components unet'"):
        Bundle.open(bundle.path)
    engine.write_bytes(data[:-3] + b"xyz")  # same size, other bytes: 'svdtrt verify' notices
    problems = verify_bundle(bundle.path)
    assert any(p.startswith("engines/unet.fp32.engine: sha256 differs") for p in problems)


def test_shapes_outside_the_profile_are_refused():
    profile = {"latents": {"min": [1, 4, 16, 16], "opt": [4, 4, 16, 16], "max": [4, 4, 16, 16]}}
    cache.check_shapes("vae_decoder", profile, {"latents": (3, 4, 16, 16)}, "svdtrt build B")
    with pytest.raises(EngineError, match=r"shape \[5, 4, 16, 16\], outside .*max \[4, 4, 16, 16\]"):
        cache.check_shapes("vae_decoder", profile, {"latents": (5, 4, 16, 16)}, "svdtrt build B")
    with pytest.raises(EngineError, match="outside"):
        cache.check_shapes("vae_decoder", profile, {"latents": (4, 4, 16)}, "svdtrt build B")


@pytest.fixture
def fake_builder(monkeypatch, tmp_path):
    """TensorRT and the GPU replaced by stand-ins, the user's cache by a folder of the test; returns
    the machine: ``built`` lists the graphs 'built', ``flags`` the builder settings of each. The
    stand-in builder appends to the timing cache it is given, as Polygraphy's
    ``EngineBytesFromNetwork(save_timing_cache=...)`` does."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    built, used = [], []
    machine = types.SimpleNamespace(trt=types.SimpleNamespace(__version__="10.3.0"), gpu=dict(ORIN, memory_bytes=2**36))
    monkeypatch.setattr(svdtrt.environment, "require_tensorrt", lambda purpose="": machine.trt)
    monkeypatch.setattr(svdtrt.environment, "cuda_device", lambda index=0: machine.gpu)

    def build(trt, graph, profile, flags):
        built.append(graph.name)
        used.append(flags)
        if flags.timing_cache:
            with open(flags.timing_cache, "ab") as cache:
                cache.write(f"tactics of {graph.name}\n".encode())
        return f"engine of {graph.name} for {profile}".encode()

    monkeypatch.setattr(builder_module, "_build_serialized", build)
    machine.built, machine.flags = built, used
    return machine


def test_rebuild_with_the_same_inputs_reuses_the_cached_engine(bundle, fake_builder):
    plan = plan_build(bundle, "fp32", components=["unet", "vae_decoder"])
    first = build_engines(bundle.path, plan, progress=False)
    assert fake_builder.built == ["unet.fp32.onnx", "vae_decoder.fp32.onnx"]
    assert not any(r.reused for r in first.values())
    second = build_engines(bundle.path, plan, progress=False)
    assert fake_builder.built == ["unet.fp32.onnx", "vae_decoder.fp32.onnx"]  # nothing built again
    assert all(r.reused for r in second.values())
    # the engines written are usable by the runtime on this machine
    bundle = Bundle.open(bundle.path)
    path, sidecar = cache.usable_engine(bundle, "unet", "fp32", "10.3.0", ORIN)
    assert path.read_bytes().startswith(b"engine of unet.fp32.onnx")
    assert verify_bundle(bundle.path) == []


def test_changed_inputs_rebuild_the_engine(bundle, fake_builder):
    build_engines(bundle.path, plan_build(bundle, "fp32", components=["unet"]), progress=False)
    build_engines(bundle.path, plan_build(bundle, "fp32", "static", components=["unet"]), progress=False)
    assert len(fake_builder.built) == 2  # another profile
    fake_builder.trt.__version__ = "10.13.0"
    build_engines(bundle.path, plan_build(bundle, "fp32", "static", components=["unet"]), progress=False)
    assert len(fake_builder.built) == 3  # another TensorRT
    fake_builder.gpu = dict(H100, memory_bytes=2**36)
    build_engines(bundle.path, plan_build(bundle, "fp32", "static", components=["unet"]), progress=False)
    assert len(fake_builder.built) == 4  # another GPU
    build_engines(bundle.path, plan_build(bundle, "fp32", "static", components=["unet"]), force=True, progress=False)
    assert len(fake_builder.built) == 5  # --force
    _, sidecar = cache.usable_engine(Bundle.open(bundle.path), "unet", "fp32", "10.13.0", H100)
    assert sidecar.profile_kind == "static"


# ---- audited GPU-path defects (docs/tensorrt.md, "Audit") -----------------------------------


def test_a_corrupt_engine_is_rebuilt_not_reused(bundle, fake_builder):
    """Audit defect 4: a matching sidecar is not enough; the engine must still have its recorded hash."""
    plan = plan_build(bundle, "fp32", components=["unet"])
    build_engines(bundle.path, plan, progress=False)
    engine = bundle.path / "engines" / "unet.fp32.engine"
    raw = bytearray(engine.read_bytes())
    raw[0] ^= 0xFF  # same size: opening the bundle does not notice, the hash does
    engine.write_bytes(bytes(raw))
    result = build_engines(bundle.path, plan, progress=False)
    assert not result["unet"].reused and len(fake_builder.built) == 2
    assert verify_bundle(bundle.path) == []  # the rebuilt engine matches its record again


def test_the_rebuild_hint_of_a_static_engine_keeps_its_clip_size(bundle, fake_builder):
    """Audit defect 7: rebuilding a static engine as suggested builds the same shape again."""
    plan = plan_build(bundle, "fp32", "static", frames=(4, 4, 4), height=(64, 96, 128), width=(64, 64, 64),
                      components=["unet"])
    build_engines(bundle.path, plan, progress=False)
    _, sidecar = cache.usable_engine(Bundle.open(bundle.path), "unet", "fp32", "10.3.0", ORIN)
    command = cache.rebuild_command(bundle.path, "unet", "fp32", sidecar)
    assert command.endswith("--profile static --frames 4 --height 96 --width 64 --components unet --force")


def test_a_file_is_hashed_once_per_version_across_backends(bundle, monkeypatch, tmp_path):
    """Audit defect 10: creating backends and loading engines does not re-hash gigabytes each time."""
    import svdtrt.bundle.store as bundle_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    hashed = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path, *a: hashed.append(path.name) or real(path, *a))
    data = bundle.manifest.components["unet"].graphs["fp32"].data
    for _ in range(3):  # three backends, or three clips
        bundle.check_file(data)
    assert hashed == [data]
    path = bundle.path / data
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))  # a new version of the file (other mtime) is hashed again, and refused
    with pytest.raises(BundleError, match="does not match its recorded sha256"):
        bundle.check_file(data)
    assert hashed == [data, data]


# ---- second audit (docs/tensorrt.md, "Second audit") -----------------------------------------------


def test_the_timing_cache_survives_builds_component_by_component(bundle, fake_builder, run_cli, tmp_path):
    """Defect 7: Polygraphy wrote the timing cache where --timing-cache said, the Jetson recipe said
    inside the bundle, and the build's publish kept only the manifest's files: every build deleted
    it. The default cache lives in the user's cache, one per TensorRT version and GPU."""
    for component in ("unet", "vae_decoder"):  # the Jetson recipe: one component at a time
        code, out, err = run_cli("build", bundle.path, "--precision", "fp32", "--components", component)
        assert code == 0, err
    first, second = (flags.timing_cache for flags in fake_builder.flags)
    assert first == second == str(tmp_path / "cache" / "svdtrt" / "tensorrt-timing" / "10.3.0-Orin-sm8.7.cache")
    assert (tmp_path / "cache" / "svdtrt" / "tensorrt-timing" / "10.3.0-Orin-sm8.7.cache").read_text() == \
        "tactics of unet.fp32.onnx\ntactics of vae_decoder.fp32.onnx\n"  # it outlived the first build
    assert verify_bundle(bundle.path) == []  # and the bundle holds only what its manifest lists
    inside = bundle.path / "engines" / "timing.cache"
    code, out, err = run_cli("build", bundle.path, "--precision", "fp32", "--timing-cache", inside)
    assert code == 2 and out == "" and err.count("\n") == 1 and "is inside the bundle" in err
    assert len(fake_builder.built) == 2


def test_a_build_hashes_each_file_once(bundle, fake_builder, monkeypatch):
    """Defect 12: every engine's build hashed its graph and weights, so the UNet's weights file,
    which unet_full and unet_shallow read too, was hashed three times per build (minutes on Jetson);
    now each file is hashed once per version (Bundle.check_file)."""
    from collections import Counter

    import svdtrt.bundle.store as bundle_module
    from svdtrt.bundle.manifest import CONFIG_FILES

    hashed = Counter()
    real = bundle_module.sha256_file
    for module in (bundle_module, builder_module):  # and the builder's own name for it, where it has one
        monkeypatch.setattr(module, "sha256_file", lambda path, *a: hashed.update([path.name]) or real(path, *a),
                            raising=False)
    plan = plan_build(bundle, "fp32", block_caching=True)
    build_engines(bundle.path, plan, progress=False)
    assert len(fake_builder.built) == 6 and hashed["unet.fp32.onnx.data"] == 1
    assert max(hashed.values()) == 1, hashed
    hashed.clear()
    assert all(r.reused for r in build_engines(bundle.path, plan, progress=False).values())
    # Reusing reads no graph, and the engines' hashes are known. Every commit writes the processing
    # configs afresh from the manifest (a few KB: Staged.commit), so those are hashed again.
    configs = {Path(name).name for name in CONFIG_FILES.values()}
    assert +Counter({name: n for name, n in hashed.items() if name not in configs}) == Counter(), hashed


def test_a_changed_builder_setting_rebuilds_the_engine(bundle, fake_builder):
    """Defect 12: the staleness key left out the build flags, so a new --workspace reused the old
    engines. The timing cache is no part of it: it only speeds a build up."""
    build_engines(bundle.path, plan_build(bundle, "fp32", components=["unet"]), progress=False)
    build_engines(bundle.path, plan_build(bundle, "fp32", components=["unet"], workspace_gb=2), progress=False)
    assert len(fake_builder.built) == 2
    _, sidecar = cache.usable_engine(Bundle.open(bundle.path), "unet", "fp32", "10.3.0", ORIN)
    assert sidecar.flags.workspace_bytes == 2 * 2**30
    other_cache = plan_build(bundle, "fp32", components=["unet"], workspace_gb=2,
                             timing_cache=bundle.path.parent / "other.cache")
    assert build_engines(bundle.path, other_cache, progress=False)["unet"].reused
    reasons = cache.stale_reasons(sidecar, {"flags": plan_build(bundle, "fp32", workspace_gb=4).flags})
    assert reasons == [f"it was built with other builder settings (workspace_bytes {2 * 2**30} -> {4 * 2**30})"]
