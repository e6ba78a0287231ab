"""Bounds on every input: sampling settings, clip sizes, images, memory, output paths, models and
Ctrl-C. Each bad input must end in one line on stderr and exit code 2 (130 for Ctrl-C), before
any sampling, leaving no output file behind."""

import builtins
import math
import os
import struct
import time
import zlib

import numpy as np
import PIL.Image
import pytest

from svdtrt.errors import InputError
from svdtrt.media.video import read_mp4


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, photo):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    photo.save(path)
    return path


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if a clip is sampled: every refusal here must come before sampling."""
    from svdtrt.runtime.pipeline import SvdPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("sampling started although the input was bad")

    monkeypatch.setattr(SvdPipeline, "__call__", refuse)


def _one_line(err: str, prefix: str = "svdtrt: error:") -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def _refused(result, *needles) -> str:
    code, _, err = result
    assert code == 2, err
    line = _one_line(err)
    for needle in needles:
        assert needle in line, line
    return line


def _nothing_written(folder) -> None:
    """No clip, frames, report or leftover part file in ``folder``."""
    assert sorted(os.listdir(folder)) == [], os.listdir(folder)


def _run(run_cli, bundle, image, out_dir, *args):
    return run_cli("run", bundle.path, "--image", image, "--out", out_dir / "clip.mp4", "--steps", "1", *args)


def _png_1bit(path, width: int, height: int) -> None:
    """Write an all-black 1-bit grayscale PNG of any size without ever holding its pixels: a
    20000x20000 one (400 million pixels, a decompression bomb) is a file of about 50 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row * 1000) for _ in range(height // 1000))
    data += z.compress(row * (height % 1000)) + z.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IEND", b""))


# 1. Sampling settings: finite and within their documented ranges ------------------------------

@pytest.mark.parametrize("option", ["--noise-aug-strength", "--min-guidance-scale", "--max-guidance-scale"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_float_options_refuse_nan_and_infinity(run_cli, tiny_bundle, image_file, tmp_path, no_sampling, option,
                                               value):
    # --option=value: argparse would read a bare '-inf' as an option
    _refused(_run(run_cli, tiny_bundle, image_file, tmp_path, f"{option}={value}"), option, "not a finite number")
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args,needle", [
    (["--noise-aug-strength", "-0.1"], "noise aug strength must be a finite number, 0 or more"),
    (["--min-guidance-scale", "-1"], "min guidance scale must be a finite number, 0 or more"),
    (["--max-guidance-scale", "-2"], "max guidance scale must be a finite number, 0 or more"),
    (["--fps", str(2**40)], "fps must be at least 1 and at most 31"),
    (["--fps", "32"], "fps must be at least 1 and at most 31"),
    (["--fps", "0"], "fps must be at least 1"),
    (["--motion-bucket-id", "256"], "motion bucket id must be 0 to 255"),
    (["--motion-bucket-id", "-1"], "motion bucket id must be 0 to 255"),
    (["--seed", str(2**64)], "seed must be an integer from 0 to 2**64 - 1"),
    (["--seed", "-1"], "seed must be an integer from 0 to 2**64 - 1"),
    (["--steps", "1001"], "steps must be at least 1 and at most 1000"),
    (["--steps", "0"], "steps must be at least 1"),
])
def test_settings_outside_their_range_are_refused(run_cli, tiny_bundle, image_file, tmp_path, no_sampling, args,
                                                  needle):
    _refused(_run(run_cli, tiny_bundle, image_file, tmp_path, *args), needle)
    _nothing_written(tmp_path)


def test_settings_at_the_edges_of_their_ranges_run(run_cli, tiny_bundle, image_file, tmp_path):
    code, out, err = _run(run_cli, tiny_bundle, image_file, tmp_path, "--fps", "31", "--motion-bucket-id", "255",
                          "--seed", str(2**64 - 1), "--noise-aug-strength", "0", "--min-guidance-scale", "0",
                          "--max-guidance-scale", "0")
    assert code == 0, err
    frames = read_mp4(tmp_path / "clip.mp4")
    assert frames.shape == (4, 64, 64, 3) and np.isfinite(frames).all()


@pytest.mark.parametrize("change,needle", [
    ({"max_guidance_scale": math.nan}, "max guidance scale"),
    ({"max_guidance_scale": math.inf}, "max guidance scale"),
    ({"min_guidance_scale": math.nan}, "min guidance scale"),
    ({"noise_aug_strength": math.inf}, "noise aug strength"),
    ({"fps": 2**40}, "fps"),
    ({"fps": math.nan}, "fps"),
    ({"motion_bucket_id": 1000}, "motion bucket id"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -5}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"steps": 10**6}, "steps"),
])
def test_library_settings_are_checked_too(tiny_bundle, change, needle):
    import dataclasses

    from svdtrt.runtime.pipeline import SamplingSettings

    settings = dataclasses.replace(SamplingSettings(frames=4, height=64, width=64), **change)
    with pytest.raises(InputError, match=needle):
        settings.check(tiny_bundle.dims)
    SamplingSettings(frames=4, height=64, width=64, seed=np.int64(3)).check(tiny_bundle.dims)  # numpy ints are ints


# 2. Clip sizes within the bundle's exported range -----------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--frames", "5"], "frames 5 is outside 4..4"),
    (["--frames", "3"], "frames 3 is outside 4..4"),
    (["--height", "128"], "height 128 is outside 64..64"),
    (["--width", "32"], "width 32 is outside 64..64"),
])
def test_sizes_outside_the_bundle_range_are_refused(run_cli, tiny_bundle, image_file, tmp_path, no_sampling, args,
                                                    needle):
    _refused(_run(run_cli, tiny_bundle, image_file, tmp_path, *args), needle, "--allow-outside-range")
    _nothing_written(tmp_path)


def test_check_and_bench_refuse_sizes_outside_the_range_too(run_cli, tiny_bundle, image_file, tmp_path, no_sampling):
    _refused(run_cli("check", tiny_bundle.path, "--image", image_file, "--report", tmp_path / "r.json",
                     "--frames", "8"), "frames 8 is outside 4..4", "--allow-outside-range")
    _refused(run_cli("bench", tiny_bundle.path, "--image", image_file, "--out", tmp_path / "bench",
                     "--backends", "onnxruntime", "--height", "128"), "height 128 is outside 64..64",
             "--allow-outside-range")
    _nothing_written(tmp_path)


def test_allow_outside_range_runs_with_a_warning(run_cli, tiny_bundle, image_file, tmp_path):
    code, _, err = _run(run_cli, tiny_bundle, image_file, tmp_path, "--frames", "5", "--allow-outside-range")
    assert code == 0, err
    line = _one_line(err.replace("\r", "\n").split("denoise")[0], prefix="svdtrt: warning:")
    assert "frames 5 is outside 4..4" in line and "TensorRT" in line
    assert read_mp4(tmp_path / "clip.mp4").shape == (5, 64, 64, 3)


# 3. Input images: decompression bombs and tiny images ------------------------------------------

def test_decompression_bomb_png_is_refused_in_one_line(run_cli, tiny_bundle, tmp_path, no_sampling):
    bomb = tmp_path / "in" / "bomb.png"
    bomb.parent.mkdir()
    _png_1bit(bomb, 20000, 20000)
    assert bomb.stat().st_size < 200_000  # a small file of a 400-megapixel image
    out = tmp_path / "out"
    out.mkdir()
    start = time.perf_counter()
    _refused(_run(run_cli, tiny_bundle, bomb, out), "too large to read", "scale it down")
    assert time.perf_counter() - start < 30
    _nothing_written(out)


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    from svdtrt.media.images import MAX_IMAGE_PIXELS, load_image

    big = tmp_path / "big.png"
    _png_1bit(big, 8193, 8193)  # 67.1 million pixels: just over 2**26, under PIL's own limit
    assert 8193 * 8193 > MAX_IMAGE_PIXELS

    def no_decoding(self):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InputError, match="8193x8193 = 67.1 million pixels"):
        load_image(big)


@pytest.mark.parametrize("size", [(1, 1), (1, 40), (40, 1)])
def test_one_pixel_wide_images_are_refused_in_one_line(run_cli, tiny_bundle, tmp_path, no_sampling, size):
    image = tmp_path / "in" / "tiny.png"
    image.parent.mkdir()
    PIL.Image.new("RGB", size, (200, 10, 10)).save(image)
    out = tmp_path / "out"
    out.mkdir()
    _refused(_run(run_cli, tiny_bundle, image, out), f"is {size[0]}x{size[1]} pixels", "at least 2x2")
    _nothing_written(out)


def test_smallest_image_runs_and_library_path_refuses_smaller(run_cli, tiny_bundle, tiny_model, tmp_path):
    from svdtrt.runtime.backends.pytorch import TorchBackend
    from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline

    image = tmp_path / "two.png"
    PIL.Image.new("RGB", (2, 2), (200, 10, 10)).save(image)
    code, _, err = run_cli("run", tiny_bundle.path, "--image", image, "--out", tmp_path / "clip.mp4", "--steps", "1")
    assert code == 0, err
    with pytest.raises(InputError, match="at least 2x2"):
        SvdPipeline(TorchBackend(tiny_model), tiny_model)(PIL.Image.new("RGB", (1, 1)),
                                                          SamplingSettings(frames=4, height=64, width=64, steps=1))


# 4. Host memory, estimated before sampling -----------------------------------------------------

def test_clip_too_large_for_host_memory_is_refused_quickly(run_cli, tiny_bundle, image_file, tmp_path, no_sampling):
    from svdtrt.runtime.memory import available_host_memory, estimate_host_memory
    from svdtrt.runtime.pipeline import SamplingSettings

    estimate = estimate_host_memory(tiny_bundle, SamplingSettings(frames=10000, height=64, width=64), "onnxruntime")
    available = available_host_memory()
    if available is None or estimate.total <= available:
        pytest.skip(f"this machine has {available} bytes available, more than the estimate {estimate.total}")
    start = time.perf_counter()
    line = _refused(_run(run_cli, tiny_bundle, image_file, tmp_path, "--frames", "10000", "--allow-outside-range"),
                    "10000-frame 64x64 clip", "of host memory, but", "GiB is available")
    assert time.perf_counter() - start < 30
    assert "warning" not in line  # the range warning comes only once every check has passed
    _nothing_written(tmp_path)


def test_memory_check_uses_the_machine_figure(run_cli, tiny_bundle, image_file, tmp_path, no_sampling, monkeypatch):
    import svdtrt.runtime.memory as memory

    monkeypatch.setattr(memory, "available_host_memory", lambda: 2**20)  # 1 MiB left
    _refused(_run(run_cli, tiny_bundle, image_file, tmp_path), "needs at least", "0.0 GiB is available")
    _refused(run_cli("check", tiny_bundle.path, "--image", image_file, "--report", tmp_path / "r.json"),
             "needs at least")
    _nothing_written(tmp_path)


def test_memory_estimate_terms(tiny_bundle):
    from svdtrt.runtime.memory import check_host_memory, estimate_host_memory
    from svdtrt.runtime.pipeline import SamplingSettings

    small = estimate_host_memory(tiny_bundle, SamplingSettings(frames=4, height=64, width=64), "onnxruntime")
    graphs = sum(r.bytes for n, r in tiny_bundle.manifest.files.items() if ".fp32.onnx" in n)
    assert small.weights == graphs and small.clip > 3 * 4 * 64 * 64 * 3 * 4
    check_host_memory(small, available=2**30)  # a default tiny clip fits in 1 GiB
    big = estimate_host_memory(tiny_bundle, SamplingSettings(frames=10000, height=64, width=64), "onnxruntime")
    # temporal attention scores: B 2 x (16 x 16 latent cells) x 2 heads x 10000^2 frames x 4 bytes
    assert big.activations == 2 * 256 * 2 * 10000**2 * 4
    on_gpu = estimate_host_memory(tiny_bundle, SamplingSettings(frames=10000, height=64, width=64), "tensorrt")
    assert on_gpu.activations == 0 and on_gpu.clip == big.clip
    with pytest.raises(InputError, match=r"needs at least 383.3 GiB \(weights 0.0 GiB, clip tensors 1.8 GiB, "
                                         r"activations 381.5 GiB\)"):
        check_host_memory(big, available=2**30)


# 5. Output paths, checked before sampling ------------------------------------------------------

def test_two_outputs_on_the_same_path_are_refused(run_cli, tiny_bundle, image_file, tmp_path, no_sampling):
    # --save-frames must end in .npy and --out in a video format, so only --timings can collide
    _refused(_run(run_cli, tiny_bundle, image_file, tmp_path, "--timings", tmp_path / "clip.mp4"),
             "--out and --timings are both")
    _nothing_written(tmp_path)


def test_output_in_a_missing_folder_is_refused_before_the_model_and_sampling(run_cli, tiny_bundle, image_file,
                                                                            tmp_path, no_sampling, monkeypatch):
    import svdtrt.runtime.backends as backends

    def no_backend(*args, **kwargs):
        raise AssertionError("the backend was created before the output path was checked")

    monkeypatch.setattr(backends, "create_backend", no_backend)
    _refused(run_cli("run", tiny_bundle.path, "--image", image_file, "--out", "/nonexistent-dir/clip.mp4"),
             "folder '/nonexistent-dir' does not exist")
    _refused(_run(run_cli, tiny_bundle, image_file, tmp_path, "--save-frames", tmp_path / "no" / "f.npy"),
             "does not exist")
    _nothing_written(tmp_path)  # the clip's reserved part file is gone too
    assert not os.path.exists("/nonexistent-dir")


def test_output_in_a_read_only_folder_is_refused_before_sampling(run_cli, tiny_bundle, image_file, tmp_path,
                                                                no_sampling):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user (root?) can write a 0o555 folder")
        _refused(run_cli("run", tiny_bundle.path, "--image", image_file, "--out", folder / "clip.mp4"),
                 "cannot write", "choose a writable location")
        _refused(run_cli("check", tiny_bundle.path, "--image", image_file, "--report", folder / "r.json"),
                 "cannot write")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o755)


def test_check_report_is_reserved_before_any_work(run_cli, tiny_bundle, image_file, tmp_path, monkeypatch):
    import svdtrt.bundle.store

    def no_work(*args, **kwargs):
        raise AssertionError("the bundle was opened before the report path was checked")

    monkeypatch.setattr(svdtrt.bundle.store.Bundle, "open", no_work)
    _refused(run_cli("check", tiny_bundle.path, "--image", image_file, "--report", "/nonexistent-dir/r.json"),
             "does not exist")
    (tmp_path / "r.json").write_text("{}")  # not a check report: refused with --force or not
    _refused(run_cli("check", tiny_bundle.path, "--image", image_file, "--report", tmp_path / "r.json", "--force"),
             "is a file that is not a check report svdtrt wrote", "choose another path, e.g. ")
    assert os.listdir(tmp_path) == ["r.json"]


def test_reserved_outputs_are_removed_when_a_later_check_fails(run_cli, tiny_bundle, image_file, tmp_path):
    _refused(_run(run_cli, tiny_bundle, image_file, tmp_path, "--save-frames", tmp_path / "f.npy",
                  "--model", "small"), "config hashes differ")
    _refused(run_cli("check", tiny_bundle.path, "--image", image_file, "--report", tmp_path / "r.json",
                     "--frames", "8"), "outside")
    _nothing_written(tmp_path)


# 6. --model must be the bundle's source model, on every path that takes it ---------------------

@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_run_with_another_model_is_refused(run_cli, tiny_bundle, image_file, tmp_path, no_sampling, backend):
    _refused(_run(run_cli, tiny_bundle, image_file, tmp_path, "--backend", backend, "--model", "small"),
             "config hashes differ", "'tiny'")
    _nothing_written(tmp_path)


def test_check_with_another_model_is_refused(run_cli, tiny_bundle, image_file, tmp_path, no_sampling):
    _refused(run_cli("check", tiny_bundle.path, "--image", image_file, "--report", tmp_path / "r.json",
                     "--model", "small"), "config hashes differ")
    _nothing_written(tmp_path)


# 7. Ctrl-C: one line and exit 130, wherever it lands ------------------------------------------

def _interrupted(result) -> None:
    code, _, err = result
    assert code == 130, err
    assert _one_line(err, prefix="svdtrt: interrupted")


def test_ctrl_c_while_a_command_imports_its_modules(run_cli, tiny_bundle, image_file, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def interrupted_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 2 and name == "bundle.store" and (globals or {}).get("__name__") == "svdtrt.cli.clip_commands":
            raise KeyboardInterrupt  # the first lazy import of 'run'
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    _interrupted(_run(run_cli, tiny_bundle, image_file, tmp_path))
    _nothing_written(tmp_path)


def test_ctrl_c_in_the_model_loader_leaves_nothing(run_cli, tiny_bundle, image_file, tmp_path, monkeypatch):
    import svdtrt.models.loading

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(svdtrt.models.loading, "load_model", interrupted)
    _interrupted(_run(run_cli, tiny_bundle, image_file, tmp_path, "--model", "tiny", "--save-frames",
                      tmp_path / "f.npy"))
    _interrupted(run_cli("check", tiny_bundle.path, "--image", image_file, "--report", tmp_path / "r.json",
                         "--model", "tiny"))
    _nothing_written(tmp_path)  # the reserved part files are gone


def test_ctrl_c_while_parsing_the_command_line(run_cli, monkeypatch):
    import importlib

    cli_main = importlib.import_module("svdtrt.cli.main")  # the module: the package's 'main' is the function

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "build_parser", interrupted)
    _interrupted(run_cli("doctor"))
