"""The sampling loop against diffusers' own StableVideoDiffusionPipeline."""

import numpy as np
import pytest

from svdtrt.media.metrics import clip_metrics
from svdtrt.runtime.backends import Recorder
from svdtrt.runtime.backends.onnxrt import OnnxRuntimeBackend
from svdtrt.runtime.backends.pytorch import TorchBackend
from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline


def _diffusers(model, image, settings):
    return model.pipeline()(image, output_type="np", **settings.pipeline_kwargs()).frames[0]


@pytest.mark.parametrize("settings", [
    SamplingSettings(frames=4, height=64, width=64, steps=4, seed=7),
    # no guidance (batch of 1), other conditioning, odd decode chunks, another aspect ratio
    SamplingSettings(frames=5, height=48, width=80, steps=3, seed=1, max_guidance_scale=1.0, fps=12,
                     motion_bucket_id=30, noise_aug_strength=0.1, decode_chunk_size=2),
], ids=["guided", "unguided-chunked"])
def test_torch_backend_reproduces_diffusers_bit_for_bit(tiny_model, photo, settings):
    reference = _diffusers(tiny_model, photo, settings)
    clip = SvdPipeline(TorchBackend(tiny_model), tiny_model)(photo, settings)
    assert clip.frames.shape == (settings.frames, settings.height, settings.width, 3)
    assert clip.frames.dtype == np.float32
    assert np.array_equal(clip.frames, reference)


def test_onnxruntime_backend_matches_diffusers_to_60_db(tiny_model, tiny_bundle, photo):
    settings = SamplingSettings(frames=4, height=64, width=64, steps=6, seed=3)
    clip = SvdPipeline(OnnxRuntimeBackend(tiny_bundle), tiny_bundle)(photo, settings)
    metrics = clip_metrics(clip.frames, _diffusers(tiny_model, photo, settings))
    assert metrics["min_psnr_db"] >= 60.0
    assert metrics["min_ssim"] > 0.9999
    assert set(clip.timings) >= {"clip", "vae_encode", "unet", "vae_decode", "total", "unet_per_step"}


def test_seed_changes_the_clip(tiny_model, photo):
    pipe = SvdPipeline(TorchBackend(tiny_model), tiny_model)
    a = pipe(photo, SamplingSettings(frames=2, height=64, width=64, steps=2, seed=0)).frames
    b = pipe(photo, SamplingSettings(frames=2, height=64, width=64, steps=2, seed=1)).frames
    assert not np.allclose(a, b)


def test_loop_calls_components_with_spec_shapes(tiny_model, photo):
    recorder = Recorder(TorchBackend(tiny_model))
    SvdPipeline(recorder, tiny_model)(photo, SamplingSettings(frames=3, height=64, width=32, steps=5,
                                                              decode_chunk_size=2))
    assert [len(recorder.calls[c]) for c in recorder.calls] == [1, 1, 5, 2, 0, 0]  # no caching graph called
    inputs, outputs = recorder.calls["unet"][0]
    assert inputs["sample"].shape == (2, 3, 8, 16, 8)
    assert inputs["timestep"].shape == (2,) and inputs["added_time_ids"][1].tolist() == pytest.approx([6.0, 127.0, 0.02])
    assert outputs["noise_pred"].shape == (2, 3, 4, 16, 8)
    assert [c[0]["latents"].shape[0] for c in recorder.calls["vae_decoder"]] == [2, 1]


class _CudaStandIn:
    """A backend on a CUDA device, as the stage timer sees it: a device and a synchronize that counts."""

    name = "stand-in"

    def __init__(self, device):
        import torch

        self.device, self.syncs = torch.device(device), 0

    def synchronize(self):
        self.syncs += 1


def test_stage_timer_does_not_synchronise_a_gpu_unless_timings_are_asked():
    from svdtrt.runtime.pipeline import StageTimer

    backend = _CudaStandIn("cuda")
    timer = StageTimer(backend)  # the default run
    for _ in range(3):
        with timer.stage("step"), timer.stage("unet"):
            pass
    assert backend.syncs == 0 and timer.summary() == {}


def test_stage_timer_times_cpu_stages_without_asking():
    from svdtrt.runtime.pipeline import StageTimer

    backend = _CudaStandIn("cpu")
    timer = StageTimer(backend)
    with timer.stage("step"), timer.stage("unet"):
        sum(range(10000))
    summary = timer.summary()
    assert backend.syncs == 0 and 0 < summary["unet"] <= summary["step"]


def test_a_cancelled_clip_stops_before_its_next_step(tiny_model, photo):
    """What the service relies on to free a replica whose request is gone (serving/app.py)."""
    import threading

    from svdtrt.errors import ClipCancelled

    cancel = threading.Event()

    class GoneDuringTheSecondStep(Recorder):
        def component(self, name):
            fn = super().component(name)

            def run(inputs):
                outputs = fn(inputs)
                if name == "unet" and len(self.calls["unet"]) == 2:
                    cancel.set()
                return outputs

            return run

    recorder = GoneDuringTheSecondStep(TorchBackend(tiny_model))
    with pytest.raises(ClipCancelled, match="cancelled after 2 of 5 steps"):
        SvdPipeline(recorder, tiny_model)(photo, SamplingSettings(frames=2, height=64, width=64, steps=5),
                                          cancel=cancel)
    assert len(recorder.calls["unet"]) == 2 and recorder.calls["vae_decoder"] == []
