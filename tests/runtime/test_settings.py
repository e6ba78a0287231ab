"""SamplingSettings.for_bundle (svdtrt/runtime/settings.py): what ``run``, ``check``, ``bench``,
``batch`` and the service fill in where a value is not given, and what they refuse."""

from __future__ import annotations

import pytest

from svdtrt.errors import InputError
from svdtrt.runtime.settings import SamplingSettings


def test_defaults_are_the_bundles_shape_and_the_schedulers_steps(tiny_bundle):
    frames, height, width = tiny_bundle.default_shape
    assert SamplingSettings.for_bundle(tiny_bundle, "advice") == SamplingSettings(frames, height, width, steps=25)
    # None is "not given", as an option left out or a form field not sent
    dpm = SamplingSettings.for_bundle(tiny_bundle, "advice", scheduler="edm-dpmsolver", steps=None, fps=None, seed=3)
    assert (dpm.scheduler, dpm.steps, dpm.fps, dpm.seed) == ("edm-dpmsolver", 15, 7, 3)
    assert SamplingSettings.for_bundle(tiny_bundle, "advice", steps=2, guidance_steps=1).steps == 2


def test_a_size_outside_the_exported_range_is_refused_with_the_callers_advice_or_let_through(tiny_bundle):
    frames = tiny_bundle.manifest.shapes.frames.max + 4
    outside = tiny_bundle.outside_range(frames, *tiny_bundle.default_shape[1:])
    with pytest.raises(InputError) as e:
        SamplingSettings.for_bundle(tiny_bundle, "export a bundle for this size", frames=frames)
    assert str(e.value) == f"{outside}; export a bundle for this size"
    assert SamplingSettings.for_bundle(tiny_bundle, None, frames=frames).frames == frames


@pytest.mark.parametrize("given, message", [
    ({"steps": 0}, "steps must be at least 1 and at most 1000"),
    ({"scheduler": "nope"}, "unknown scheduler 'nope'"),
    ({"cache_interval": 0}, "cache interval must be 1 (no caching) to 1000, got 0"),
])
def test_settings_outside_their_limits_are_refused(tiny_bundle, given, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SamplingSettings.for_bundle(tiny_bundle, None, **given)


def test_a_profile_stands_where_no_value_is_given(tiny_bundle):
    from svdtrt.bundle.manifest import ProfileSettings

    profile = ProfileSettings(backend="onnxruntime", precision="fp32", scheduler="euler", steps=12, cache_interval=2,
                              guidance_steps=6)
    s = SamplingSettings.for_bundle(tiny_bundle, "advice", profile=profile, steps=None, cache_interval=None, seed=3)
    assert (s.scheduler, s.steps, s.cache_interval, s.guidance_steps, s.seed) == ("euler", 12, 2, 6, 3)
    s = SamplingSettings.for_bundle(tiny_bundle, "advice", profile=profile, steps=20, cache_interval=1)
    assert (s.steps, s.cache_interval, s.guidance_steps) == (20, 1, 6)
    # the profile's steps belong to its scheduler: another one takes its own default
    s = SamplingSettings.for_bundle(tiny_bundle, "advice", profile=profile, scheduler="edm-dpmsolver")
    assert (s.scheduler, s.steps, s.cache_interval) == ("edm-dpmsolver", 15, 2)
    # no profile: the defaults, the exact clip
    assert SamplingSettings.for_bundle(tiny_bundle, "advice", profile=None).full_compute
