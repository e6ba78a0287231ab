"""What a newcomer meets first: --help and --version, -v anywhere, a progress bar per named stage,
the random-weights note, defaults shared by the commands, output formats by extension,
wrong-kind paths, a fast one-line refusal offline, and a --dry-run that writes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import svdtrt
from svdtrt.cli.parser import build_parser


def _one_line_error(code, err, needle):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("svdtrt: error:") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory):
    from svdtrt.media.images import sample_image

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    sample_image("chelsea").resize((96, 64)).save(path)
    return path


def test_help_is_plain_text_and_version_is_the_package_version(run_cli):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for text in [parser.format_help()] + [p.format_help() for p in sub.choices.values()]:
        assert "``" not in text and ":func:" not in text and ":class:" not in text
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"svdtrt {svdtrt.__version__}"


@pytest.mark.parametrize("argv, verbose", [
    (["verify", "B"], False), (["-v", "verify", "B"], True), (["verify", "B", "-v"], True),
    (["verify", "-v", "B"], True), (["check", "B", "--verbose"], True), (["-v", "check", "B"], True),
])
def test_verbose_is_accepted_before_and_after_the_command(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


def test_check_defaults_to_the_bundled_photo_and_names_each_stage(tiny_bundle):
    # a process of its own, as a user runs it: in-process, pytest's log capture owns the root logger
    done = subprocess.run([sys.executable, "-m", "svdtrt", "check", str(tiny_bundle.path), "--steps", "2", "-v"],
                          capture_output=True, text=True, timeout=900)
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 0 and "PASSED" in out, err
    for stage in ("check 1/4: PyTorch loop", "check 2/4: diffusers reference",
                  "check 3/4: onnxruntime fp32 clip", "check 4/4: onnxruntime fp32 components"):
        assert re.search(re.escape(stage) + r"[^\r\n]*100%", err), stage
    # -v after the command adds each stage's wall time
    assert "INFO svdtrt.check.compare: check 2/4: diffusers reference took" in err


def test_run_says_when_the_model_has_random_weights(run_cli, tiny_bundle, small_photo, tmp_path):
    code, out, err = run_cli("run", tiny_bundle.path, "--image", small_photo, "--out", tmp_path / "c.mp4",
                             "--steps", "1")
    assert code == 0, err
    note = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "'tiny' preset" in note[0] and "seeded random weights" in note[0]
    assert "noise-like" in note[0] and "not a video of the photo" in note[0]


@pytest.mark.parametrize("suffix, magic", [(".gif", b"GIF89a"), (".webm", b"\x1a\x45\xdf\xa3"),
                                           (".mp4", b"ftyp")])
def test_run_writes_the_format_its_extension_names(run_cli, tiny_bundle, small_photo, tmp_path, suffix, magic):
    import av

    out_path = tmp_path / f"clip{suffix}"
    code, _, err = run_cli("run", tiny_bundle.path, "--image", small_photo, "--out", out_path, "--steps", "1")
    assert code == 0, err
    head = out_path.read_bytes()[:12]
    assert head.startswith(magic) or magic in head
    with av.open(str(out_path)) as container:
        assert len(list(container.decode(video=0))) == 4


@pytest.mark.parametrize("args, needle", [
    (["--out", "clip.avi"], "--out 'clip.avi': svdtrt writes clips as .mp4, .webm, .gif"),
    (["--out", "clip"], "svdtrt writes clips as"),
    (["--out", "c.mp4", "--save-frames", "frames.png"], "--save-frames 'frames.png': frames are saved as a "
                                                        "NumPy array; end the file name with .npy"),
])
def test_unknown_output_formats_are_refused_before_any_work(run_cli, tiny_bundle, small_photo, tmp_path,
                                                           monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("run", tiny_bundle.path, "--image", small_photo, *args)
    _one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []


def test_wrong_kind_paths_say_what_they_are(run_cli, tiny_bundle, small_photo, tmp_path):
    code, _, err = run_cli("run", tiny_bundle.path, "--image", tmp_path, "--out", tmp_path / "c.mp4")
    _one_line_error(code, err, f"image '{tmp_path}' is a folder; give the path of a PNG or JPEG file")
    code, _, err = run_cli("calibrate", tiny_bundle.path, "--images", small_photo)
    _one_line_error(code, err, f"--images '{small_photo}' is a file, not a folder; give a folder of PNG or JPEG files")
    code, _, err = run_cli("check", small_photo)
    _one_line_error(code, err, "is a file, not a bundle folder")


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_hub_id_without_network_fails_fast_in_one_line(tmp_path, env):
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **env}
    environment.pop("HF_HUB_OFFLINE", None) if "HF_ENDPOINT" in env else None
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "svdtrt", "export", "someone/svd-model", "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, env=environment, timeout=300)
    seconds = time.perf_counter() - start
    _one_line_error(done.returncode, done.stderr, "model 'someone/svd-model' is not in the local hub cache and")
    assert ("HF_HUB_OFFLINE is set" if "HF_HUB_OFFLINE" in env else "cannot be reached") in done.stderr
    assert "Retry" not in done.stderr and done.stdout == ""
    # huggingface_hub's own retries took 27 s before the first line; one try is bounded by the
    # timeout (10 s) plus Python's start-up and imports on a loaded 2-core machine
    assert seconds < 60
    assert not (tmp_path / "b").exists()


def test_build_dry_run_writes_nothing(run_cli, tiny_bundle, tmp_path, monkeypatch):
    cache, cwd = tmp_path / "cache", tmp_path / "cwd"
    cache.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(cwd)
    roots = (tiny_bundle.path.parent, cache, cwd)
    before = [_tree(root) for root in roots]
    code, out, err = run_cli("build", tiny_bundle.path, "--precision", "fp32", "--dry-run",
                             "--timing-cache", "timing.cache", "--profile", "static")
    assert code == 0 and "plan: fp32 engines" in out, err
    assert [_tree(root) for root in roots] == before


def _tree(root) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.slow
def test_demo_shows_the_parity_claim_in_a_picture(run_cli, tmp_path):
    import PIL.Image

    code, out, err = run_cli("demo", "--out", tmp_path / "demo")
    assert code == 0 and "PASSED" in out, err
    assert "seeded random weights" in out and "side_by_side.png" in out
    for stage in ("export", "check 2/4: diffusers reference", "check 3/4: onnxruntime fp32 clip"):
        assert stage in err
    picture = PIL.Image.open(tmp_path / "demo" / "side_by_side.png")
    assert picture.mode == "RGB" and picture.width > 4 * 128 and picture.height >= 4 * 128
    pixels = np.asarray(picture)
    # rows: photo, ONNX Runtime, diffusers, difference; the ONNX Runtime and diffusers tiles are
    # the same to 8 bits, and the amplified difference tiles are black
    step = 128 + 14 + 4
    tested, reference, difference = (pixels[i * step:i * step + 128, 110:110 + 128] for i in (1, 2, 3))
    assert np.array_equal(tested, reference) and tested.std() > 1
    assert difference.max() == 0
    assert sorted(p.name for p in (tmp_path / "demo").iterdir() if not p.name.startswith(".")) == sorted(
        ["bundle", "clip.mp4", "input.png", "report.json", "side_by_side.png"])
