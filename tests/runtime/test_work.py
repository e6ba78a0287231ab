"""Fewer and cheaper UNet calls: neutral settings change nothing, block caching matches a
DeepCache reference written here over diffusers' UNet, every scheduler matches diffusers'
pipeline, and the work is counted."""

import contextlib

import numpy as np
import pytest
import torch

from svdtrt.media.metrics import clip_metrics
from svdtrt.models.flops import clip_unet_flops, unet_call_flops
from svdtrt.runtime.backends.onnxrt import OnnxRuntimeBackend
from svdtrt.runtime.backends.pytorch import TorchBackend
from svdtrt.runtime.pipeline import SamplingSettings, SvdPipeline, planned_unet_calls
from svdtrt.runtime.schedulers import SCHEDULERS, use_scheduler

SIZE = dict(frames=4, height=64, width=64)


def _diffusers(model, image, settings):
    pipe, kwargs = model.pipeline(), settings.pipeline_kwargs()
    use_scheduler(pipe, settings.scheduler, kwargs["generator"])
    return pipe(image, output_type="np", **kwargs).frames[0]


class DeepCacheReference:
    """Block caching as the DeepCache paper defines it (section 3.2), over diffusers' own UNet and
    independent of svdtrt.models.block_cache: a full step runs diffusers' UNet and keeps the feature
    entering the skip branch, here the hidden state entering layer ``layer`` of the last up block
    (the first channels of that layer's resnet input, ahead of the concatenated skip); a cached
    step runs diffusers' UNet with that feature replaced by the kept one (a forward pre-hook), so
    everything below the branch is discarded and only the shallow layers' results reach the
    output. The other components are the torch backend's."""

    def __init__(self, model, layer=0):
        self.torch = TorchBackend(model)
        self.unet, self.name, self.device = model.unet, "deepcache-reference", torch.device("cpu")
        self.layer = layer

    @contextlib.contextmanager
    def _last_up_block_input(self, replace=None):
        seen = {}

        def hook(_module, args, kwargs):
            hidden = args[0]  # torch.cat([deep feature, skip], dim=1)
            seen["feature"] = hidden[:, :channels]
            if replace is not None:
                return (torch.cat([replace, hidden[:, channels:]], dim=1), *args[1:]), kwargs
            return None

        channels = self._deep_channels()
        handle = self.unet.up_blocks[-1].resnets[self.layer].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield seen
        finally:
            handle.remove()

    def _deep_channels(self):
        """Channels of the hidden state entering the layer: the output of the layer before it."""
        before = self.unet.up_blocks[-1].resnets[self.layer - 1] if self.layer else self.unet.up_blocks[-2].resnets[-1]
        return before.spatial_res_block.out_channels

    def component(self, name):
        if name not in ("unet_full", "unet_shallow"):
            return self.torch.component(name)

        @torch.no_grad()
        def run(inputs):
            b, f = inputs["sample"].shape[:2]
            cached = inputs["deep_feature"].flatten(0, 1) if name == "unet_shallow" else None
            with self._last_up_block_input(cached) as seen:
                noise_pred = self.unet(inputs["sample"], inputs["timestep"],
                                       encoder_hidden_states=inputs["encoder_hidden_states"],
                                       added_time_ids=inputs["added_time_ids"], return_dict=False)[0]
            feature = seen["feature"].reshape(b, f, *seen["feature"].shape[1:])
            return {"noise_pred": noise_pred, "deep_feature": feature}

        return run

    def synchronize(self):
        pass


def test_neutral_settings_give_todays_clip_bit_for_bit_on_torch(tiny_model, photo):
    pipe = SvdPipeline(TorchBackend(tiny_model), tiny_model)
    today = pipe(photo, SamplingSettings(**SIZE, steps=4, seed=5)).frames
    neutral = pipe(photo, SamplingSettings(**SIZE, steps=4, seed=5, cache_interval=1, guidance_steps=4)).frames
    assert np.array_equal(neutral, today)
    assert np.array_equal(today, _diffusers(tiny_model, photo, SamplingSettings(**SIZE, steps=4, seed=5)))


def test_neutral_settings_give_todays_clip_on_onnxruntime(tiny_bundle, photo):
    pipe = SvdPipeline(OnnxRuntimeBackend(tiny_bundle), tiny_bundle)
    today = pipe(photo, SamplingSettings(**SIZE, steps=4, seed=5)).frames
    neutral = pipe(photo, SamplingSettings(**SIZE, steps=4, seed=5, cache_interval=1, guidance_steps=9)).frames
    assert clip_metrics(neutral, today)["min_psnr_db"] >= 100.0


@pytest.mark.parametrize("interval,guidance", [(2, None), (3, 2)], ids=["cache2", "cache3-guidance2"])
def test_block_caching_matches_the_deepcache_reference(tiny_model, tiny_bundle, photo, interval, guidance):
    settings = SamplingSettings(**SIZE, steps=7, seed=2, cache_interval=interval, guidance_steps=guidance)
    reference = SvdPipeline(DeepCacheReference(tiny_model), tiny_model)(photo, settings)
    onnx = SvdPipeline(OnnxRuntimeBackend(tiny_bundle), tiny_bundle)(photo, settings)
    torch_clip = SvdPipeline(TorchBackend(tiny_model), tiny_model)(photo, settings)
    full = SvdPipeline(TorchBackend(tiny_model), tiny_model)(photo, SamplingSettings(**SIZE, steps=7, seed=2))
    assert onnx.unet_calls == reference.unet_calls == planned_unet_calls(settings)
    assert clip_metrics(onnx.frames, reference.frames)["min_psnr_db"] >= 60.0
    assert clip_metrics(torch_clip.frames, reference.frames)["min_psnr_db"] >= 100.0
    # caching did change the clip: the shallow steps really ran on a reused feature
    assert not np.array_equal(torch_clip.frames, full.frames)


def test_schedule_of_unet_calls():
    s = SamplingSettings(**SIZE, steps=5, cache_interval=3, guidance_steps=2)
    assert planned_unet_calls(s) == [("unet_full", 2), ("unet_shallow", 2), ("unet_shallow", 1),
                                     ("unet_full", 1), ("unet_shallow", 1)]
    assert planned_unet_calls(SamplingSettings(**SIZE, steps=3, max_guidance_scale=1.0)) == [("unet", 1)] * 3


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_reproduces_diffusers_bit_for_bit(tiny_model, photo, name):
    settings = SamplingSettings(**SIZE, steps=4, seed=11, scheduler=name)
    clip = SvdPipeline(TorchBackend(tiny_model), tiny_model)(photo, settings)
    assert np.array_equal(clip.frames, _diffusers(tiny_model, photo, settings))


def test_schedulers_differ_and_ancestral_follows_the_seed(tiny_model, photo):
    pipe = SvdPipeline(TorchBackend(tiny_model), tiny_model)
    clips = {n: pipe(photo, SamplingSettings(**SIZE, steps=3, scheduler=n)).frames for n in SCHEDULERS}
    assert not np.array_equal(clips["euler"], clips["edm-dpmsolver"])
    assert not np.array_equal(clips["euler"], clips["euler-ancestral"])
    again = pipe(photo, SamplingSettings(**SIZE, steps=3, scheduler="euler-ancestral")).frames
    assert np.array_equal(again, clips["euler-ancestral"])


def test_flops_are_counted_per_graph(tiny_bundle):
    configs, dims = tiny_bundle.manifest.configs["unet"], tiny_bundle.dims
    full = unet_call_flops(configs, dims, "unet", 2, 4, 64, 64)
    assert unet_call_flops(configs, dims, "unet_full", 2, 4, 64, 64) == full
    shallow = unet_call_flops(configs, dims, "unet_shallow", 2, 4, 64, 64)
    assert 0 < shallow < full
    assert unet_call_flops(configs, dims, "unet", 1, 4, 64, 64) * 2 == full
    s = SamplingSettings(**SIZE, steps=25, cache_interval=3, guidance_steps=12)
    work = clip_unet_flops(configs, dims, planned_unet_calls(s), 4, 64, 64)
    assert work["unet_calls"] == 25
    assert work["unet_flops"] == 4 * full + 8 * shallow + 5 * full // 2 + 8 * shallow // 2
    assert clip_unet_flops(configs, dims, planned_unet_calls(SamplingSettings(**SIZE)), 4, 64, 64)[
        "unet_flops"] == 25 * full


def test_settings_are_checked():
    from svdtrt.errors import InputError
    from svdtrt.models.presets import PRESETS
    from svdtrt.specs import ModelDims

    p = PRESETS["tiny"]
    dims = ModelDims.from_configs(p["unet"], p["vae"], p["image_encoder"])
    for bad in ({"cache_interval": 0}, {"guidance_steps": -1}, {"scheduler": "ddim"}):
        with pytest.raises(InputError):
            SamplingSettings(**SIZE, **bad).check(dims)
    with pytest.raises(InputError, match="no block caching"):
        SamplingSettings(**SIZE, cache_interval=2).pipeline_kwargs()


def test_caching_graphs_read_the_unet_weights_file(tiny_bundle):
    from svdtrt.bundle.integrity import verify_bundle
    from svdtrt.bundle.store import owned_files

    m = tiny_bundle.manifest
    for name in ("unet_full", "unet_shallow"):
        graph = m.components[name].graphs["fp32"]
        assert graph.data == "unet.fp32.onnx.data"
        assert not (tiny_bundle.path / f"{name}.fp32.onnx.data").exists()
        assert owned_files(m, name, graph) == [graph.file]  # replacing it keeps the UNet's weights
    assert owned_files(m, "unet", m.components["unet"].graphs["fp32"]) == ["unet.fp32.onnx"]
    assert verify_bundle(tiny_bundle.path) == []


def test_a_later_cache_layer_reexported_into_a_bundle_matches_the_reference(tiny_model, tiny_bundle, photo,
                                                                            tmp_path):
    """export --components unet_full,unet_shallow --cache-layer 1 over a bundle: the new graphs
    still read the UNet's weights file, the bundle verifies, and its cached clip is DeepCache's
    at that branch, on ONNX Runtime and on torch with the bundle's dims."""
    import shutil

    from svdtrt.bundle.integrity import verify_bundle
    from svdtrt.bundle.store import Bundle
    from svdtrt.export.bundle_export import export_bundle

    shutil.copytree(tiny_bundle.path, tmp_path / "b")
    bundle = export_bundle(tiny_model, tmp_path / "b", components=["unet_full", "unet_shallow"], cache_layer=1,
                           progress=False)
    assert (bundle.dims.cache_depth, bundle.dims.cache_layer) == (1, 1)
    assert bundle.manifest.components["unet_shallow"].graphs["fp32"].data == "unet.fp32.onnx.data"
    assert sorted(p.name for p in bundle.path.glob("*.data")) == sorted(p.name for p in tiny_bundle.path.glob("*.data"))
    assert verify_bundle(bundle.path) == []
    # adding another component keeps the bundle's branch
    again = export_bundle(tiny_model, bundle.path, components=["vae_decoder"], progress=False)
    assert Bundle.open(again.path).dims.cache_layer == 1

    settings = SamplingSettings(**SIZE, steps=5, seed=3, cache_interval=2)
    reference = SvdPipeline(DeepCacheReference(tiny_model, layer=1), tiny_model)(photo, settings)
    onnx = SvdPipeline(OnnxRuntimeBackend(bundle), bundle)(photo, settings)
    torch_clip = SvdPipeline(TorchBackend(tiny_model, dims=bundle.dims), bundle)(photo, settings)
    layer0 = SvdPipeline(TorchBackend(tiny_model), tiny_model)(photo, settings)
    assert clip_metrics(onnx.frames, reference.frames)["min_psnr_db"] >= 60.0
    assert clip_metrics(torch_clip.frames, reference.frames)["min_psnr_db"] >= 100.0
    assert not np.array_equal(torch_clip.frames, layer0.frames)  # the branch did move
