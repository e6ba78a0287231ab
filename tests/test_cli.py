"""The command line: round trips, and every bad input ending in one line and exit code 2."""

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch  # noqa: F401  (read by a skipif condition)

from svdtrt.media.video import read_mp4


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, photo):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    photo.save(path)
    return path


def _one_line_error(code, err, needle):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svdtrt: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


def _info(caplog) -> list[str]:
    """svdtrt's INFO lines in ``caplog``: what -v shows."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("svdtrt") and r.levelno == logging.INFO]


def test_run_writes_mp4_and_frames(run_cli, tiny_bundle, image_file, tmp_path, caplog):
    code, out, _ = run_cli("run", tiny_bundle.path, "--image", image_file, "--out", tmp_path / "c.mp4",
                           "--steps", "2", "--frames", "3", "--allow-outside-range", "--save-frames", tmp_path / "f.npy",
                           "--timings", tmp_path / "t.json", "-v")
    assert code == 0  # 3 frames lies outside the bundle's exported 4: allowed, with a warning
    # -v: the loading's time, each session, the clip's stage times, every file written
    info = _info(caplog)
    assert any(m.startswith("svdtrt run: loading PyTorch, diffusers and ONNX Runtime took ") for m in info), info
    for name in ("image_encoder", "vae_encoder", "unet", "vae_decoder"):
        assert any(m.startswith(f"run session of {name}.fp32.onnx on CPUExecutionProvider opened in ") for m in info)
    assert any(m.startswith("denoise: clip ") and " unet " in m and " vae_decode " in m for m in info), info
    for name in ("c.mp4", "f.npy", "t.json"):
        assert any(m.startswith(f"wrote {tmp_path / name} (") for m in info), name
    assert "UNet x steps" in out and "total" in out
    # the summary names the work-reduction settings the clip was made with
    assert "(onnxruntime, fp32; euler, 2 steps, guidance 1 to 3 on every step, no block caching, 2 UNet calls)" in out
    timings = json.loads((tmp_path / "t.json").read_text())
    assert timings["settings"]["steps"] == 2 and timings["backend"] == "onnxruntime"
    seconds = timings["seconds"]
    assert {"clip", "vae_encode", "unet", "step", "vae_decode", "total"} <= set(seconds)
    assert 0 < seconds["unet"] <= seconds["step"] <= seconds["total"]
    frames = np.load(tmp_path / "f.npy")
    assert frames.shape == (3, 64, 64, 3) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert read_mp4(tmp_path / "c.mp4").shape == (3, 64, 64, 3)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_grayscale_palette_and_rgba_images_work(run_cli, tiny_bundle, photo, tmp_path, mode, caplog):
    path = tmp_path / f"img-{mode}.png"
    photo.convert(mode).save(path)
    code, _, err = run_cli("run", tiny_bundle.path, "--image", path, "--out", tmp_path / "c.mp4", "--steps", "1")
    assert code == 0, err
    assert _info(caplog) == []  # without -v


def test_verify_and_doctor_log_their_stages_with_v(run_cli, tiny_bundle, caplog):
    code, _, err = run_cli("verify", tiny_bundle.path, "-v")
    assert code == 0, err
    code, _, err = run_cli("-v", "doctor")
    assert code == 0, err
    info = _info(caplog)
    assert any(m.startswith("svdtrt verify: loading ONNX and the bundle's manifest took ") for m in info), info
    files = len(tiny_bundle.manifest.files)
    assert any(m.startswith(f"verify: {files} files, ") and " hashed in " in m for m in info), info
    assert any(m.startswith("svdtrt doctor: probing PyTorch, ONNX Runtime and TensorRT took ") for m in info), info


def test_check_writes_report(run_cli, tiny_bundle, image_file, tmp_path):
    code, out, _ = run_cli("check", tiny_bundle.path, "--image", image_file, "--steps", "2",
                           "--report", tmp_path / "r.json")
    assert code == 0 and "PASSED" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["end_to_end"]["vs_diffusers"]["min_psnr_db"] >= 60


def test_existing_outputs_are_not_overwritten_without_force(run_cli, tiny_bundle, image_file, tmp_path):
    precious = tmp_path / "precious.mp4"
    precious.write_bytes(b"precious")  # not a clip: --force does not replace it either
    for force in ((), ("--force",)):
        code, _, err = run_cli("run", tiny_bundle.path, "--image", image_file, "--out", precious, "--steps", "1",
                               *force)
        _one_line_error(code, err, "is a file that is not a clip svdtrt wrote; svdtrt replaces only a clip it wrote")
        assert precious.read_bytes() == b"precious"
    clip = tmp_path / "c.mp4"
    assert run_cli("run", tiny_bundle.path, "--image", image_file, "--out", clip, "--steps", "1")[0] == 0
    code, _, err = run_cli("run", tiny_bundle.path, "--image", image_file, "--out", clip, "--steps", "1")
    _one_line_error(code, err, "already exists")
    code, _, _ = run_cli("run", tiny_bundle.path, "--image", image_file, "--out", clip, "--steps", "1", "--force",
                         "--seed", "1")
    assert code == 0
    report = tmp_path / "r.json"
    report.write_text("keep")
    code, _, err = run_cli("check", tiny_bundle.path, "--image", image_file, "--report", report)
    _one_line_error(code, err, "is a file that is not a check report svdtrt wrote")  # not svdtrt's: --force or not
    assert report.read_text() == "keep"
    code, _, err = run_cli("export", "tiny", "--out", tiny_bundle.path)
    _one_line_error(code, err, "already exists")


@pytest.fixture
def bad_bundles(tiny_bundle, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_bundle.path, corrupt)
    (corrupt / "manifest.json").write_text("{not json")
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"corrupt": corrupt, "old": old, "empty": empty, "missing": tmp_path / "nowhere"}


@pytest.mark.parametrize("which,needle", [
    ("missing", "is not found; create one with 'svdtrt export"), ("empty", "is not a bundle"), ("corrupt", "corrupt manifest.json"),
    ("old", "format version 0"),
])
def test_bad_bundles(run_cli, bad_bundles, image_file, tmp_path, which, needle):
    code, _, err = run_cli("run", bad_bundles[which], "--image", image_file, "--out", tmp_path / "c.mp4")
    _one_line_error(code, err, needle)
    assert not (tmp_path / "c.mp4").exists()


def test_bad_images(run_cli, tiny_bundle, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    code, _, err = run_cli("run", tiny_bundle.path, "--image", tmp_path / "missing.png", "--out", tmp_path / "c.mp4")
    _one_line_error(code, err, "not found")
    code, _, err = run_cli("run", tiny_bundle.path, "--image", text, "--out", tmp_path / "c.mp4")
    _one_line_error(code, err, "is not a readable image")
    code, _, err = run_cli("run", tiny_bundle.path, "--image", tmp_path, "--out", tmp_path / "c.mp4")
    _one_line_error(code, err, f"image '{tmp_path}' is a folder; give the path of a PNG or JPEG file")


@pytest.mark.parametrize("args,needle", [
    (["--height", "60"], "multiples of 8"),
    (["--width", "20"], "multiples of 8"),
    (["--frames", "0"], "frames must be at least 1"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--decode-chunk-size", "0"], "decode chunk size"),
    (["--steps", "many"], "invalid int value"),
    (["--backend", "cuda-magic"], "invalid choice"),
    (["--fps", "0"], "fps must be at least 1"),
    (["--motion-bucket-id", "-1"], "motion bucket id"),
    pytest.param(["--backend", "torch", "--device", "cuda"], "needs a CUDA GPU",
                 marks=pytest.mark.skipif("torch.cuda.is_available()", reason="a CUDA GPU is here")),
])
def test_bad_settings(run_cli, tiny_bundle, image_file, tmp_path, args, needle):
    code, _, err = run_cli("run", tiny_bundle.path, "--image", image_file, "--out", tmp_path / "c.mp4", *args)
    _one_line_error(code, err, needle)


@pytest.mark.parametrize("args,needle", [
    (["no-such-preset"], "unknown model 'no-such-preset'"),
    (["tiny", "--frames", "4:2:8"], "MIN <= OPT <= MAX"),
    (["tiny", "--height", "0"], "at least 1"),
    (["tiny", "--height", "100"], "multiples of 8"),
])
def test_bad_export_arguments(run_cli, tmp_path, args, needle):
    code, _, err = run_cli("export", *args, "--out", tmp_path / "b")
    _one_line_error(code, err, needle)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_export_cli_and_console_script(tmp_path):
    """The installed entry point, as a user runs it: export works, bad input gives no traceback."""
    cmd = [sys.executable, "-m", "svdtrt"]
    done = subprocess.run(cmd + ["export", "tiny", "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "unet" in done.stdout and (tmp_path / "b" / "manifest.json").is_file()
    bad = subprocess.run(cmd + ["run", str(tmp_path / "b"), "--image", "nope.png", "--out", str(tmp_path / "c.mp4")],
                         capture_output=True, text=True)
    _one_line_error(bad.returncode, bad.stderr, "not found")


def test_demo_refuses_its_output_folder_before_loading_anything(run_cli, tmp_path, monkeypatch):
    """It used to load the model first (14-25 s) and only then refuse."""
    import svdtrt.models.loading

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(svdtrt.models.loading, "load_model", no_work)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "report.json").write_text("{}")  # a demo folder: --force would replace it
    code, _, err = run_cli("demo", "--out", tmp_path / "demo")
    _one_line_error(code, err, "already exists; choose another path or pass --force")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    code, _, err = run_cli("demo", "--out", tmp_path / "notes", "--force")
    _one_line_error(code, err, "is a folder that is not a demo folder (no report.json); svdtrt replaces only")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


@pytest.mark.slow
def test_demo_writes_clip_and_passing_report(run_cli, tmp_path, caplog):
    code, out, _ = run_cli("demo", "--out", tmp_path / "demo", "-v")
    assert code == 0 and "PASSED" in out
    # -v: each stage's time: the loading, the model build, every export step, the check's stages
    info = _info(caplog)
    for stage in ("svdtrt demo: loading PyTorch, diffusers, the ONNX exporter and ONNX Runtime",
                  "building the tiny preset (seeded random weights)", "unet_full: ONNX export",
                  "unet_full: validation on ONNX Runtime", "check 2/4: diffusers reference"):
        assert any(m.startswith(f"{stage} took ") for m in info), stage
    assert any(m.startswith(f"published {tmp_path / 'demo'}") for m in info), info
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["passed"] and report["end_to_end"]["vs_diffusers"]["min_psnr_db"] >= 60
    assert read_mp4(tmp_path / "demo" / "clip.mp4").shape == (4, 64, 64, 3)
    assert PIL.Image.open(tmp_path / "demo" / "input.png").size == (512, 512)
    code, _, err = run_cli("demo", "--out", tmp_path / "demo")
    _one_line_error(code, err, "already exists")


def test_torch_backend_run_equals_diffusers_frames(run_cli, tiny_bundle, tiny_model, photo, image_file, tmp_path):
    from svdtrt.media.images import load_image
    from svdtrt.runtime.pipeline import SamplingSettings

    code, _, err = run_cli("run", tiny_bundle.path, "--image", image_file, "--out", tmp_path / "c.mp4",
                           "--backend", "torch", "--device", "cpu", "--steps", "2", "--seed", "5",
                           "--save-frames", tmp_path / "f.npy")
    assert code == 0, err
    settings = SamplingSettings(frames=4, height=64, width=64, steps=2, seed=5)
    reference = tiny_model.pipeline()(load_image(image_file), output_type="np", **settings.pipeline_kwargs()).frames[0]
    assert np.array_equal(np.load(tmp_path / "f.npy"), reference)


def test_unwritable_outputs_are_refused_before_sampling(run_cli, tiny_bundle, image_file, tmp_path):
    code, _, err = run_cli("run", tiny_bundle.path, "--image", image_file, "--out", tmp_path / "no" / "c.mp4")
    _one_line_error(code, err, "does not exist")
    (tmp_path / "folder.mp4").mkdir()
    code, _, err = run_cli("run", tiny_bundle.path, "--image", image_file, "--out", tmp_path / "folder.mp4", "--force")
    _one_line_error(code, err, "is a folder")
    code, _, err = run_cli("check", tiny_bundle.path, "--image", image_file, "--report", tmp_path / "no" / "r.json")
    _one_line_error(code, err, "does not exist")
