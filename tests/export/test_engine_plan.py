"""``svdtrt build``: the build plan (no TensorRT needed) and the refusals before any build."""

from __future__ import annotations

import shutil
import sys

import pytest

from svdtrt.build.plan import check_precision_supported, plan_build
from svdtrt.errors import InputError
from svdtrt.specs import COMPONENTS, SVD_COMPONENTS

from ..helpers import rerecord

# The tiny preset: 4 latent channels (2C = 8), embedding width 32, latent scale 4, exported at 4 frames, 64x64.
RANGES = ["--frames", "2:4:6", "--height", "64:64:128", "--width", "64"]


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    """A writable copy of the tiny bundle, with a stand-in fp16 graph entry (the fp32 files)."""
    path = shutil.copytree(tiny_bundle.path, tmp_path / "tiny")

    def add_fp16(manifest):
        for entry in manifest.components.values():
            entry.graphs["fp16"] = entry.graphs["fp32"].model_copy(deep=True)

    return rerecord(path, edit=add_fp16)


def _files(path):
    return {p.relative_to(path).as_posix(): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


def _dry_run(bundle, run_cli, precision, *args):
    """``svdtrt build --dry-run``: the plan it prints, which writes nothing into the bundle."""
    before = _files(bundle.path)
    code, out, err = run_cli("build", bundle.path, "--precision", precision, "--dry-run", *args)
    assert code == 0, err
    assert _files(bundle.path) == before  # a dry run writes nothing: no engine, no plan file
    return out


def _ranges(args):
    """``RANGES`` as plan_build's keyword arguments."""
    ranges = {}
    for flag, value in zip(args[::2], args[1::2]):
        parts = tuple(int(v) for v in value.split(":"))
        ranges[flag.lstrip("-")] = parts * 3 if len(parts) == 1 else parts
    return ranges


def _printed(out, plan):
    """The dry run prints every component of ``plan``: graph -> engine and each input's shapes."""
    assert out.startswith(f"plan: {plan.precision} engines, {plan.profile} profile, strongly typed")
    for name, item in plan.components.items():
        assert f"{name:14s} {item.graph} -> {item.engine}" in out
        for tensor, p in item.profile.items():
            assert f"{tensor:22s} min {p['min']}  opt {p['opt']}  max {p['max']}" in out


def test_dry_run_dynamic_plan_has_every_component_with_min_opt_max(bundle, run_cli):
    out = _dry_run(bundle, run_cli, "fp16", *RANGES)
    plan = plan_build(bundle, "fp16", **_ranges(RANGES))
    _printed(out, plan)
    assert list(plan.components) == list(SVD_COMPONENTS)
    assert plan.profile == "dynamic" and plan.precision == "fp16"
    assert plan.shapes == {"frames": {"min": 2, "opt": 4, "max": 6}, "height": {"min": 64, "opt": 64, "max": 128},
                              "width": {"min": 64, "opt": 64, "max": 64}}
    c = plan.components
    assert c["image_encoder"].profile == {"pixel_values": {"min": [1, 3, 224, 224], "opt": [1, 3, 224, 224],
                                                              "max": [1, 3, 224, 224]}}
    assert c["vae_encoder"].profile == {"image": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64],
                                                     "max": [1, 3, 128, 64]}}
    # the UNet's batch is the classifier-free-guidance batch: 1 without guidance, 2 with it
    assert c["unet"].profile == {
        "sample": {"min": [1, 2, 8, 16, 16], "opt": [2, 4, 8, 16, 16], "max": [2, 6, 8, 32, 16]},
        "timestep": {"min": [1], "opt": [2], "max": [2]},
        "encoder_hidden_states": {"min": [1, 1, 32], "opt": [2, 1, 32], "max": [2, 1, 32]},
        "added_time_ids": {"min": [1, 3], "opt": [2, 3], "max": [2, 3]},
    }
    # a decode chunk runs from 1 frame to the clip's frames
    assert c["vae_decoder"].profile == {"latents": {"min": [1, 4, 16, 16], "opt": [4, 4, 16, 16],
                                                       "max": [6, 4, 32, 16]}}
    for name, item in c.items():
        assert item.graph == bundle.manifest.components[name].graphs["fp16"].file
        assert item.engine == f"engines/{name}.fp16.engine"
        assert item.sidecar == f"engines/{name}.fp16.engine.json"
    assert plan.flags.model_dump() == {"strongly_typed": True, "builder_precision_flags": [], "tf32": False,
                             "workspace_bytes": None, "timing_cache": None}
    assert "max [2, 6, 8, 32, 16]" in out
    assert not (bundle.path / "engines").exists()  # a dry run builds nothing


def test_static_plan_uses_the_optimal_shape_for_min_opt_and_max_but_the_unet_batch(bundle, run_cli):
    out = _dry_run(bundle, run_cli, "fp16", "--profile", "static", "--block-caching", *RANGES)
    plan = plan_build(bundle, "fp16", "static", **_ranges(RANGES), block_caching=True)
    _printed(out, plan)
    assert plan.profile == "static"
    expected_opt = {"pixel_values": [1, 3, 224, 224], "image": [1, 3, 64, 64], "sample": [2, 4, 8, 16, 16],
                    "timestep": [2], "encoder_hidden_states": [2, 1, 32], "added_time_ids": [2, 3],
                    "latents": [4, 4, 16, 16], "deep_feature": [2, 4, 64, 16, 16]}
    seen = set()
    for component, item in plan.components.items():
        for name, p in item.profile.items():
            assert p["opt"] == p["max"] == expected_opt[name], name
            # the UNet graphs also take batch 1, for guidance truncation's conditional-only calls
            batch_1 = [1, *expected_opt[name][1:]] if component.startswith("unet") else expected_opt[name]
            assert p["min"] == batch_1, (component, name)
            seen.add(name)
    assert seen == set(expected_opt)


def test_build_plans_the_four_svd_engines_by_default(tiny_bundle, bundle, run_cli):
    """Second audit, defect 3: a plain build planned six engines, three of them full-size UNets
    (unet, unet_full, unet_shallow), although the GPU tests and the help expect SVD's four; the
    block-caching engines are built when asked for."""
    code, out, err = run_cli("build", tiny_bundle.path, "--precision", "fp32", "--dry-run")  # a fresh bundle
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines() if " -> engines/" in line] == list(SVD_COMPONENTS)
    out = _dry_run(bundle, run_cli, "fp32", "--block-caching")
    assert [line.split()[0] for line in out.splitlines() if " -> engines/" in line] == [
        *SVD_COMPONENTS, "unet_full", "unet_shallow"]
    assert list(plan_build(bundle, "fp32", components=["unet_shallow"]).components) == ["unet_shallow"]


def test_dynamic_plan_without_overrides_is_the_manifests_profile(bundle):
    plan = plan_build(bundle, "fp32")
    for name, item in plan.components.items():
        assert item.profile == {k: v.model_dump() for k, v in bundle.manifest.components[name].profile.items()}


def test_plan_flags_components_and_written_file(bundle, tmp_path):
    plan = plan_build(bundle, "fp32", "dynamic", components=["unet", "vae_decoder"], workspace_gb=1.5,
                      timing_cache=tmp_path / "timing.cache")
    assert list(plan.components) == ["unet", "vae_decoder"]
    assert plan.flags.workspace_bytes == 1536 * 2**20
    assert plan.flags.timing_cache == str(tmp_path / "timing.cache")


@pytest.mark.parametrize("precision, hint", [("int8", "svdtrt quantize"), ("fp8", "svdtrt quantize")])
def test_missing_precision_graph_says_how_to_make_it(bundle, run_cli, precision, hint):
    code, out, err = run_cli("build", bundle.path, "--precision", precision, "--dry-run")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"no {precision} graph" in err and hint in err


def test_missing_fp16_graph_points_at_convert(tiny_bundle, run_cli):
    code, _, err = run_cli("build", tiny_bundle.path, "--precision", "fp16", "--dry-run")
    assert code == 2 and err.count("\n") == 1 and f"svdtrt convert {tiny_bundle.path} --precision fp16" in err


@pytest.mark.parametrize("args, message", [
    (["--height", "60"], "multiples of"),
    (["--components", "unet", "text_encoder"], "unknown component 'text_encoder'"),
    (["--workspace", "0"], "positive number of GiB"),
])
def test_bad_build_options_are_one_line_errors(bundle, run_cli, args, message):
    code, _, err = run_cli("build", bundle.path, "--precision", "fp32", "--dry-run", *args)
    assert code == 2 and err.count("\n") == 1 and message in err


def test_build_without_tensorrt_is_one_line_exit_2(bundle, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, also on a TensorRT machine
    code, _, err = run_cli("build", bundle.path, "--precision", "fp32", "--components", "unet")
    assert code == 2 and err.count("\n") == 1
    assert "svdtrt build needs TensorRT" in err and "[tensorrt]' --extra-index-url" in err
    assert not list((bundle.path / "engines").glob("*.engine"))


def test_fp8_refused_below_compute_capability_8_9():
    orin = {"name": "Orin", "compute_capability": "8.7"}
    with pytest.raises(InputError, match="fp8 needs compute capability 8.9.*8.7"):
        check_precision_supported("fp8", orin)
    check_precision_supported("int8", orin)
    check_precision_supported("fp8", {"name": "NVIDIA L4", "compute_capability": "8.9"})
    check_precision_supported("fp8", {"name": "NVIDIA H100", "compute_capability": "9.0"})


def test_build_plan_becomes_polygraphys_real_loader_chain(bundle, tmp_path):
    """The plan as Polygraphy's own objects (lazy loaders: built here without TensorRT or a GPU):
    a strongly typed ONNX network, one optimization profile with the plan's min/opt/max, no
    builder precision flags, TF32 off, the timing cache read and written."""
    import types

    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    from svdtrt.build.builder import engine_loader

    cache = tmp_path / "timing.cache"
    plan = plan_build(bundle, "fp16", "static", components=["unet"], workspace_gb=2, timing_cache=cache)
    item = plan.components["unet"]
    trt = types.SimpleNamespace(MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"))  # TensorRT's enum
    loader = engine_loader(trt, bundle.path / item.graph, item.profile, plan.flags)

    assert isinstance(loader, EngineBytesFromNetwork) and loader.timing_cache_path == str(cache)
    network, config = loader._network, loader._config
    assert isinstance(network, NetworkFromOnnxPath) and isinstance(config, CreateConfig)
    assert network.path == str(bundle.path / item.graph) and network.strongly_typed
    assert not (config.fp16 or config.int8 or config.fp8 or config.bf16 or config.tf32)  # precision is the graph's
    assert config.memory_pool_limits == {"workspace": 2 * 2**30}
    assert config.timing_cache_path == str(cache)
    (profile,) = config.profiles
    assert isinstance(profile, Profile) and list(profile) == COMPONENTS["unet"].input_names
    sample = profile["sample"]
    assert sample.opt == sample.max == [2, 4, 8, 16, 16]  # static: B=2 (guidance), F=4, 2C=8, 64/4
    assert sample.min == [1, 4, 8, 16, 16]  # and batch 1 after --guidance-steps
    for name, shapes in item.profile.items():
        assert (profile[name].min, profile[name].opt, profile[name].max) == (shapes["min"], shapes["opt"], shapes["max"])
