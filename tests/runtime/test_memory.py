"""The device-memory estimate of a clip (svdtrt/runtime/memory.py) and how ``run`` and ``doctor``
print it and hold a clip to ``--device-memory`` (the host-memory estimate: tests/test_inputs.py)."""

from __future__ import annotations

import pytest

from svdtrt.runtime.memory import (
    DEVICE_FRAME_COPIES,
    LATENT_COPIES,
    STAGES,
    estimate_device_memory,
)
from svdtrt.runtime.settings import SamplingSettings


def _file_bytes(bundle, *components, precision="fp32"):
    """Bytes of the graph files of ``components``, a file read by several counted once."""
    m, names = bundle.manifest, set()
    for c in components:
        graph = m.components[c].graphs[precision]
        names.update(n for n in (graph.file, graph.data) if n)
    return sum(m.files[n].bytes for n in names)


def test_device_memory_is_estimated_per_stage(tiny_bundle):
    settings = SamplingSettings(4, 64, 64, steps=2)
    unet, vae, clip = (tiny_bundle.manifest.configs[k] for k in ("unet", "vae", "image_encoder"))
    activations = {  # the largest pair of feature maps of each stage, fp32 (tiny: latent scale 4)
        "CLIP": 2 * ((224 // clip["patch_size"]) ** 2 + 1) * clip["intermediate_size"] * 4,
        "VAE encode": 2 * vae["block_out_channels"][0] * 64 * 64 * 4,
        "denoise": 2 * 2 * 4 * unet["block_out_channels"][0] * 16 * 16 * 4,
        "VAE decode": 2 * 4 * vae["block_out_channels"][0] * 64 * 64 * 4}
    latents = LATENT_COPIES * 2 * 4 * 4 * 16 * 16 * 4
    loop = {"CLIP": 0, "VAE encode": 0, "denoise": latents, "VAE decode": latents + DEVICE_FRAME_COPIES * 4 * 3 * 64 * 64 * 4}

    # tensorrt loads each stage's engine when it first runs (no engine built: the graphs' bytes)
    trt = estimate_device_memory(tiny_bundle, settings, "tensorrt", "fp32")
    order = ["image_encoder", "vae_encoder", "unet", "vae_decoder"]
    assert [s.stage for s in trt.stages] == list(STAGES)
    for i, stage in enumerate(trt.stages):
        assert stage.weights == _file_bytes(tiny_bundle, *order[:i + 1])
        assert stage.activations == max(activations[s] for s in STAGES[:i + 1])  # one block, the largest so far
        assert stage.loop == loop[stage.stage]
    assert trt.peak.stage == "VAE decode" and trt.peak.total == sum((trt.stages[-1].weights, activations["VAE decode"],
                                                                      loop["VAE decode"]))
    # with --one-engine-at-a-time only the stage's engine and its own activations
    alone = estimate_device_memory(tiny_bundle, settings, "tensorrt", "fp32", one_engine_at_a_time=True)
    assert [(s.weights, s.activations) for s in alone.stages] == [
        (_file_bytes(tiny_bundle, c), activations[s]) for c, s in zip(order, STAGES)]
    # onnxruntime-cuda opens every session before sampling; block caching runs unet_full and
    # unet_shallow, which read the UNet's weights file
    cached = SamplingSettings(4, 64, 64, steps=2, cache_interval=2)
    ort = estimate_device_memory(tiny_bundle, cached, "onnxruntime-cuda", "fp32")
    every = _file_bytes(tiny_bundle, "image_encoder", "vae_encoder", "unet_full", "unet_shallow", "vae_decoder")
    assert {s.weights for s in ort.stages} == {every}
    # torch in fp16: the fp32 model's weights at 2 bytes, but for the VAE encoder (force_upcast)
    torch16 = estimate_device_memory(tiny_bundle, settings, "torch", "fp16", "cuda")
    half = _file_bytes(tiny_bundle, "image_encoder", "unet", "vae_decoder") / 2
    assert torch16.stages[0].weights == int(half + _file_bytes(tiny_bundle, "vae_encoder"))
    assert torch16.stages[-1].activations == activations["VAE decode"] // 2
    # the CPU backends hold nothing on a device
    assert estimate_device_memory(tiny_bundle, settings, "onnxruntime", "fp32") is None
    assert estimate_device_memory(tiny_bundle, settings, "torch", "fp32", "cpu") is None


def test_a_decode_chunk_lowers_the_peak(tiny_bundle):
    whole, chunked = (estimate_device_memory(tiny_bundle, SamplingSettings(4, 64, 64, steps=2, decode_chunk_size=n),
                                             "tensorrt", "fp16", one_engine_at_a_time=True) for n in (None, 1))
    assert chunked.peak.total < whole.peak.total


def _image(tmp_path, photo):
    path = tmp_path / "in.png"
    photo.save(path)
    return path


def test_run_prints_the_estimate_and_refuses_a_clip_over_the_budget(tiny_bundle, run_cli, photo, tmp_path):
    image, out = _image(tmp_path, photo), tmp_path / "clip.mp4"
    code, stdout, err = run_cli("run", tiny_bundle.path, "--image", image, "--out", out, "--backend", "tensorrt",
                                "--device-memory", "0.001")
    assert code == 2 and err.count("\n") == 1, err
    assert "a 4-frame 64x64 clip on tensorrt (fp32) needs at least" in err
    assert "over the --device-memory budget of 1.0 MiB" in err and "--decode-chunk-size" in err
    assert stdout.startswith("device memory: at least") and "by stage: CLIP" in stdout
    assert not out.exists()
    # within the budget the run goes on, here to the one line that says TensorRT is missing
    code, stdout, err = run_cli("run", tiny_bundle.path, "--image", image, "--out", out, "--backend", "tensorrt",
                                "--device-memory", "16")
    assert code == 2 and "device memory: at least" in stdout and "over the" not in err
    code, _, err = run_cli("run", tiny_bundle.path, "--image", image, "--out", out, "--device-memory", "16")
    assert code == 2 and err.count("\n") == 1 and "--device-memory applies to a GPU backend" in err
    code, _, err = run_cli("run", tiny_bundle.path, "--image", image, "--out", out, "--backend", "tensorrt",
                           "--device-memory", "-1")
    assert code == 2 and "not a positive number of GiB" in err


@pytest.mark.parametrize("budget, code", [("16", 0), ("0.001", 2)])
def test_doctor_prints_a_clips_memory_and_holds_it_to_the_budget(tiny_bundle, run_cli, budget, code):
    got, out, err = run_cli("doctor", tiny_bundle.path, "--backend", "onnxruntime-cuda", "--precision", "fp32",
                            "--steps", "2", "--device-memory", budget)
    assert got == code, err
    assert "clip: 4 frames of 64x64, 2 steps, on onnxruntime-cuda (fp32)" in out
    assert "device memory: at least" in out
    assert (err.count("\n") == 1 and "over the --device-memory budget" in err) if code else err == ""
    got, out, _ = run_cli("doctor", tiny_bundle.path)  # a CPU backend: its host memory
    assert got == 0 and "host memory: at least" in out and "device memory" not in out
