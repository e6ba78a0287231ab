"""The manifest's schema and the bundle's confinement (docs/architecture.md, "The manifest"): every
malformed manifest is a one-line BundleError naming the field, and no path leads outside."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from svdtrt.bundle import manifest as schema
from svdtrt.bundle.store import Bundle
from svdtrt.errors import BundleError


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle.path, tmp_path / "b")


def _edit(bundle, change) -> None:
    raw = json.loads((bundle / "manifest.json").read_text())
    change(raw)
    (bundle / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("change, field", [
    (lambda m: m.pop("shapes"), "shapes"),
    (lambda m: m["components"]["unet"]["graphs"]["fp32"].pop("file"), "components.unet.graphs.fp32.file"),
    (lambda m: m["dims"].__setitem__("latent_channels", "4"), "dims.latent_channels"),
    (lambda m: m["shapes"]["frames"].__setitem__("opt", 4.0), "shapes.frames.opt"),
    (lambda m: m["files"]["unet.fp32.onnx"].__setitem__("bytes", -1), "files.unet.fp32.onnx.bytes"),
    (lambda m: m["components"]["unet"]["graphs"]["fp32"].__setitem__("seconds", float("nan")),
     "components.unet.graphs.fp32.seconds"),
    (lambda m: m["components"]["unet"]["graphs"]["fp32"].__setitem__("seconds", float("inf")),
     "components.unet.graphs.fp32.seconds"),
    (lambda m: m["components"]["unet"]["graphs"].__setitem__("int-8", {}), "components.unet.graphs.int-8"),
    (lambda m: m.__setitem__("surprise", 1), "surprise"),
    # the configs the runtime builds from, and the dims they give: each was a traceback deep in
    # diffusers or the block-caching code (KeyError, linspace() TypeError, IndexError, "mean must
    # have 3 elements", ValueError), and 'verify' passed them all
    (lambda m: m["configs"].pop("scheduler"), "configs.scheduler"),
    (lambda m: m["configs"]["scheduler"].__setitem__("num_train_timesteps", "1000"),
     "configs.scheduler.num_train_timesteps"),
    (lambda m: m["configs"]["scheduler"].__setitem__("sigma_max", None) or m["configs"]["scheduler"].__setitem__(
        "beta_schedule", "cosine"), "configs.scheduler.beta_schedule"),
    (lambda m: m["configs"]["feature_extractor"].__setitem__("image_mean", [0.5, 0.5]),
     "configs.feature_extractor.image_mean"),
    (lambda m: m["configs"]["feature_extractor"].__setitem__("image_std", [0.5, 0.0, 0.5]),
     "configs.feature_extractor.image_std.1"),
    (lambda m: m["configs"]["unet"].__setitem__("layers_per_block", [1]), "configs.unet"),
    (lambda m: m["dims"].__setitem__("cache_depth", 2), "dims.cache_depth"),
    (lambda m: m["dims"].__setitem__("cache_layer", 5), "dims.cache_layer"),
    (lambda m: m["dims"].__setitem__("latent_channels", 8), "dims.latent_channels"),
])
def test_malformed_manifests_are_bundle_errors_naming_the_field(bundle, change, field, run_cli):
    _edit(bundle, change)
    with pytest.raises(BundleError) as e:
        Bundle.open(bundle)
    message = str(e.value)
    assert f"field '{field}" in message and "\n" not in message
    assert f"'svdtrt export tiny --out {bundle} --force'" in message
    code, out, err = run_cli("verify", bundle)  # a bundle that does not verify, whatever the cause: exit 1
    assert code == 1 and field in out and "FAILED: 1 problem(s)" in out and "Traceback" not in err


def test_the_released_processing_configs_are_valid():
    from svdtrt.bundle.configs import FeatureExtractorConfig, SchedulerConfig
    from svdtrt.models.presets import SVD_FEATURE_EXTRACTOR, SVD_SCHEDULER

    SchedulerConfig.model_validate(SVD_SCHEDULER, strict=True)
    FeatureExtractorConfig.model_validate(SVD_FEATURE_EXTRACTOR, strict=True)


def test_a_deeply_nested_manifest_is_a_corrupt_one(bundle, run_cli):
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="corrupt manifest.json .nested too deeply"):
        Bundle.open(bundle)
    code, out, err = run_cli("verify", bundle)
    assert code == 1 and "nested too deeply" in out and "Traceback" not in err


def test_a_fifo_manifest_is_refused_at_once(bundle):
    import subprocess
    import sys

    (bundle / "manifest.json").unlink()
    os.mkfifo(bundle / "manifest.json")
    with pytest.raises(BundleError, match="manifest.json is a FIFO, not a file"):
        Bundle.open(bundle)  # it used to wait for a writer forever
    done = subprocess.run([sys.executable, "-m", "svdtrt", "verify", str(bundle)], capture_output=True, text=True,
                          check=False,
                          timeout=300)
    assert done.returncode == 1 and "manifest.json is a FIFO, not a file" in done.stdout, done.stderr


@pytest.mark.parametrize("version", (1, 3, "2", None))
def test_other_format_versions_are_refused(bundle, version):
    _edit(bundle, lambda m: m.__setitem__("format_version", version))
    with pytest.raises(BundleError, match=f"format version {version}, this svdtrt reads version 2"):
        Bundle.open(bundle)


@pytest.mark.parametrize("path", ("../elsewhere/vae_decoder.fp32.onnx", "/etc/passwd", "./unet.fp32.onnx",
                                  "a\\b.onnx", "manifest.json"))
def test_paths_must_stay_inside_the_bundle(bundle, path):
    def point_elsewhere(m):
        graph = m["components"]["vae_decoder"]["graphs"]["fp32"]
        m["files"][path] = m["files"].pop(graph["file"])
        graph["file"] = path

    _edit(bundle, point_elsewhere)
    with pytest.raises(BundleError, match="is not a relative path inside the bundle"):
        Bundle.open(bundle)


def test_a_symlink_leading_out_of_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "vae_decoder.fp32.onnx", outside)
    os.symlink(outside, bundle / "vae_decoder.fp32.onnx")
    with pytest.raises(BundleError, match="vae_decoder.fp32.onnx is a link or leads outside the bundle"):
        Bundle.open(bundle)


def test_files_must_be_exactly_what_the_manifest_refers_to(bundle):
    _edit(bundle, lambda m: m["files"].pop("unet.fp32.onnx.data"))
    with pytest.raises(BundleError, match="files does not list unet.fp32.onnx.data"):
        Bundle.open(bundle)


def test_a_file_of_another_size_names_the_file_and_the_rebuild_command(bundle):
    data = bundle / "unet.fp32.onnx.data"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(BundleError) as e:
        Bundle.open(bundle)
    # the repair re-exports the UNet (its caching graphs come along) and keeps everything else
    assert "unet.fp32.onnx.data has" in str(e.value) and \
        f"repair it with 'svdtrt export tiny --out {bundle} --components unet'" in str(e.value)


def test_the_manifest_round_trips_and_lists_every_file_with_its_hash(tiny_bundle):
    from svdtrt.bundle.store import sha256_file

    m = tiny_bundle.manifest
    assert schema.parse(schema.dump(m), "x") == m
    on_disk = {p.relative_to(tiny_bundle.path).as_posix() for p in tiny_bundle.path.rglob("*")
               if p.is_file() and p.name != "manifest.json"}
    assert set(m.files) == on_disk
    for name, record in m.files.items():
        assert record.bytes == (tiny_bundle.path / name).stat().st_size
        assert record.sha256 == sha256_file(tiny_bundle.path / name)


def test_dump_refuses_an_inconsistent_manifest(tiny_bundle):
    m = tiny_bundle.manifest.model_copy(deep=True)
    m.files.pop("unet.fp32.onnx")
    with pytest.raises(ValueError, match="files does not list unet.fp32.onnx"):
        schema.dump(m)


def test_profiles_round_trip_and_a_manifest_without_them_is_written_without_the_key(tiny_bundle):
    """An svdtrt from before profiles refuses unknown keys: a bundle without profiles stays readable by it."""
    text = schema.dump(tiny_bundle.manifest)
    assert b'"profiles"' not in text
    settings = schema.ProfileSettings(backend="onnxruntime", precision="fp32", scheduler="euler", steps=12,
                                      cache_interval=2)
    profile = schema.Profile(
        settings=settings, floor=schema.Floor(min_psnr_db=30.0), tuned_for=schema.Floor(min_psnr_db=30.0),
        quality=schema.ProfileQuality(min_psnr_db=33.0, min_ssim=0.97),
        speed=schema.ProfileSpeed(seconds_per_clip=1.0, clips=3, exact_seconds_per_clip=2.0, speedup_vs_exact=2.0,
                                  unet_flops=10, exact_unet_flops=20),
        clip=schema.ProfileClip(frames=4, height=64, width=64, seed=0), images=[], machine="a machine",
        measured_with=schema.MeasuredWith(config_hashes=dict(tiny_bundle.manifest.config_hashes), weights={}),
        created="now")
    m = tiny_bundle.manifest.model_copy(update={"profiles": {"fast": profile}})
    again = schema.parse(schema.dump(m), "b")
    assert again.profiles == {"fast": profile}
    raw = json.loads(schema.dump(m))
    raw["profiles"]["fast"]["settings"]["steps"] = "12"
    with pytest.raises(BundleError, match="field 'profiles.fast.settings.steps'"):
        schema.parse(json.dumps(raw), "b")
