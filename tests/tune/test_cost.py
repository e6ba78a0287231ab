"""The cost model (svdtrt/tune/cost.py): the call timer sees exactly the UNet calls the loop plans,
and a prediction is the measured fixed cost plus each planned call's measured (or FLOP-priced)
seconds."""

from __future__ import annotations

from collections import Counter

import numpy as np

from svdtrt.bundle.manifest import ProfileSettings
from svdtrt.runtime.backends import create_backend
from svdtrt.runtime.pipeline import SvdPipeline, planned_unet_calls
from svdtrt.runtime.settings import SamplingSettings
from svdtrt.tune.cost import CallTimer, CostModel
from svdtrt.tune.space import clip_settings


def _candidate(**work) -> ProfileSettings:
    return ProfileSettings(**{"backend": "onnxruntime", "precision": "fp32", "scheduler": "euler", "steps": 4,
                              "cache_interval": 1, **work})


def test_the_call_timer_times_every_planned_unet_call_and_prices_them(tiny_bundle, photo):
    base = SamplingSettings.for_bundle(tiny_bundle, None)
    candidate = _candidate(cache_interval=2, guidance_steps=2)
    settings = clip_settings(base, candidate)
    with CallTimer(create_backend("onnxruntime", tiny_bundle)) as timer:
        clip = SvdPipeline(timer, tiny_bundle)(photo, settings)
        calls = timer.take()
    planned = planned_unet_calls(settings)
    assert {call: len(seconds) for call, seconds in calls.items()} == dict(Counter(planned))
    assert set(calls) == {("unet_full", 2), ("unet_shallow", 2), ("unet_full", 1), ("unet_shallow", 1)}
    assert timer.take() == {}

    cost = CostModel(tiny_bundle, base)
    assert cost.calls(candidate) == planned
    # before anything is measured, only the FLOP order is known
    assert cost.predict(candidate) == 0.0 and cost.unet_flops(candidate) == sum(map(cost.call_flops, planned))
    fixed = clip.timings["total"] - sum(map(sum, calls.values()))
    cost.add("fp32", calls, [fixed])
    assert np.isclose(cost.predict(candidate), fixed + sum(np.median(calls[c]) for c in planned))
    # a call never timed is priced at the measured seconds per FLOP: unet batch 2 here
    rate = np.median([np.median(s) / cost.call_flops(c) for c, s in calls.items()])
    full = _candidate(steps=3)
    assert np.isclose(cost.predict(full), fixed + 3 * rate * cost.call_flops(("unet", 2)))
    # another precision is priced like fp32 until it is measured
    assert cost.predict(full.model_copy(update={"precision": "int8"})) == cost.predict(full)


class _Ordered:
    """A stand-in for a GPU backend's queue, over the real ONNX Runtime backend: it records when
    the device is synchronised and when a component is called."""

    def __init__(self, backend):
        self.backend, self.name, self.device, self.events = backend, backend.name, backend.device, []

    def component(self, name):
        fn = self.backend.component(name)

        def call(inputs):
            self.events.append(name)
            return fn(inputs)

        return call

    def synchronize(self):
        self.events.append("sync")

    def close(self):
        self.backend.close()


def test_each_timed_call_is_between_two_synchronisations(tiny_bundle, photo):
    """On a GPU a call returns before its work is done: a call's seconds are true only between
    synchronisations of the device (as the loop's StageTimer takes them)."""
    ordered = _Ordered(create_backend("onnxruntime", tiny_bundle))
    with CallTimer(ordered) as timer:
        SvdPipeline(timer, tiny_bundle)(photo, SamplingSettings.for_bundle(tiny_bundle, None, steps=2))
    unet = [i for i, e in enumerate(ordered.events) if e == "unet"]
    assert len(unet) == 2
    assert all(ordered.events[i - 1] == "sync" and ordered.events[i + 1] == "sync" for i in unet)
    assert "sync" not in ordered.events[:ordered.events.index("unet") - 1]  # the encoders are not timed per call
