"""A bundle's named profiles (svdtrt/bundle/profiles.py, ``--profile`` of cli/args.py): a profile
makes exactly the clip of its settings given as options, options given override it, one measured
with other weights or another model is refused, and ``svdtrt info`` lists them."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest

from svdtrt.bundle.store import Bundle
from svdtrt.cli.args import BACKEND
from tests.helpers import rerecord


def _frames(run_cli, bundle, image, out, *options) -> np.ndarray:
    code, _, err = run_cli("run", bundle, "--image", image, "--out", out / "clip.mp4", "--save-frames",
                           out / "frames.npy", *options)
    assert code == 0, err
    frames = np.load(out / "frames.npy")
    shutil.rmtree(out)
    return frames


def test_run_with_a_profile_makes_the_clip_of_its_settings_given_as_options(tuned, tune_images, tmp_path, run_cli):
    bundle, _ = tuned
    fast = Bundle.open(bundle).manifest.profiles["fast"].settings
    assert (fast.scheduler, fast.steps, fast.cache_interval, fast.guidance_steps) == ("euler", 12, 1, None)
    image = tune_images[0] / "astronaut.png"
    out = tmp_path / "o"
    out.mkdir()

    def frames(*options):
        out.mkdir(exist_ok=True)
        return _frames(run_cli, bundle, image, out, *options)

    explicit = ("--backend", fast.backend, "--precision", fast.precision, "--scheduler", fast.scheduler, "--steps",
                str(fast.steps), "--cache-interval", str(fast.cache_interval))
    assert np.array_equal(frames("--profile", "fast"), frames(*explicit))
    # an option given overrides the profile's value; the others stay the profile's
    assert np.array_equal(frames("--profile", "fast", "--steps", "6"), frames(*explicit[:-4], "--steps", "6",
                                                                             *explicit[-2:]))
    # another scheduler takes its own default steps, not the profile's
    dpm = frames("--profile", "fast", "--scheduler", "edm-dpmsolver")
    assert np.array_equal(dpm, frames("--scheduler", "edm-dpmsolver", "--steps", "15"))


def test_the_profile_group_takes_backend_and_precision_from_a_profile_unless_given(tuned):
    profile = Bundle.open(tuned[0]).manifest.profiles["fast"]
    int8 = profile.model_copy(update={"settings": profile.settings.model_copy(update={"precision": "int8"})})
    args = argparse.Namespace(backend=None, precision=None, device="cpu", model=None, cuda_graph=False,
                              one_engine_at_a_time=False)
    assert (BACKEND.parse(args).backend, BACKEND.parse(args).precision) == ("onnxruntime", "fp32")
    assert BACKEND.parse(args, int8).precision == "int8"
    args.precision = "fp16"
    assert BACKEND.parse(args, int8).precision == "fp16"


def _other_weights(bundle):
    data = bundle / "unet.fp32.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40  # one bit of one weight of the UNet
    data.write_bytes(bytes(raw))
    rerecord(bundle, "unet.fp32.onnx.data")


def _other_model(bundle):
    def edit(m):
        m.profiles["fast"].measured_with.config_hashes["unet"] = "0" * 64  # copied from another model's bundle
    rerecord(bundle, edit=edit)


@pytest.mark.parametrize("change, reason", [(_other_weights, "measured with other fp32 weights"),
                                            (_other_model, "measured on another model")])
def test_a_profile_measured_with_other_weights_is_refused(tuned, tune_images, tmp_path, run_cli, change, reason):
    bundle = shutil.copytree(tuned[0], tmp_path / "b")
    change(bundle)
    assert run_cli("verify", bundle)[0] == 0  # a bundle that is whole, whose profile no longer fits it
    code, _, err = run_cli("run", bundle, "--image", tune_images[0] / "astronaut.png", "--out", tmp_path / "c.mp4",
                           "--profile", "fast")
    assert code == 2 and err.count("\n") == 1, err
    assert f"profile 'fast' of bundle '{bundle}' is out of date: it was {reason}" in err
    assert f"'svdtrt tune {bundle} --min-psnr 30 --apply --force'" in err
    assert not (tmp_path / "c.mp4").exists()
    code, out, _ = run_cli("info", bundle)
    assert code == 0 and "fast: onnxruntime fp32 euler 12 steps, cache 1, guidance all  [OUT OF DATE" in out


@pytest.mark.parametrize("command", ["run", "batch", "serve", "bench"])
def test_an_unknown_profile_is_one_line_before_any_work(tuned, tiny_bundle, tmp_path, run_cli, command):
    options = {"run": ("--image", tmp_path / "none.png", "--out", tmp_path / "c.mp4"),
               "batch": ("--images", tmp_path, "--out", tmp_path / "clips"), "serve": (),
               "bench": ("--out", tmp_path / "bench")}[command]
    if command == "run":
        from svdtrt.media.images import sample_image

        sample_image("astronaut").save(tmp_path / "none.png")
    code, _, err = run_cli(command, tuned[0], *options, "--profile", "nope")
    assert code == 2 and err == f"svdtrt: error: bundle '{tuned[0]}' has no profile 'nope': choose from fast, " \
                                 "balanced, exact\n"
    code, _, err = run_cli(command, tiny_bundle.path, *options, "--profile", "fast")
    assert code == 2 and f"has no profiles; make them with 'svdtrt tune {tiny_bundle.path} --min-psnr 30 --apply'" in err


def test_info_lists_the_profiles_with_what_they_were_measured_on(tuned, run_cli):
    code, out, _ = run_cli("info", tuned[0])
    assert code == 0
    assert "  profiles (--profile NAME on run, serve, batch, bench):" in out
    for line in ("    fast: onnxruntime fp32 euler 12 steps, cache 1, guidance all",
                 "      floor PSNR >= 30 dB; worst frame ", " on astronaut.png, coffee.png; held out (rocket.png) ",
                 "    balanced: onnxruntime fp32 euler 25 steps", "      floor PSNR >= 40 dB",
                 "    exact: onnxruntime fp32 euler 25 steps", "floor identical to the reference"):
        assert line in out, line
    assert "OUT OF DATE" not in out
