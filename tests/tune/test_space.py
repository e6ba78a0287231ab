"""What a tune searches (svdtrt/tune/space.py): the candidates from the registries or the
command line's lists, the reference first, each once, and the floors."""

from __future__ import annotations

import pytest

from svdtrt.errors import BundleError, InputError
from svdtrt.media.metrics import PSNR_CAP_DB
from svdtrt.runtime.schedulers import SCHEDULERS
from svdtrt.runtime.settings import SamplingSettings
from svdtrt.tune.space import (
    CACHE_INTERVALS,
    GUIDANCE_SHARES,
    candidates,
    floors,
    reference_candidate,
)


@pytest.fixture(scope="module")
def base(tiny_bundle):
    return SamplingSettings.for_bundle(tiny_bundle, None)


def test_the_default_space_comes_from_the_registries(tiny_bundle, base):
    space = candidates(tiny_bundle, "onnxruntime", base)
    assert space[0] == reference_candidate("onnxruntime")
    searched = {(n, s) for n, c in SCHEDULERS.items() for s in c.search_steps}
    assert {(c.scheduler, c.steps) for c in space} == searched
    assert {c.precision for c in space} == {"fp32"}  # the tiny bundle's only precision
    assert {c.cache_interval for c in space} == set(CACHE_INTERVALS)  # it has the block-caching graphs
    per_steps = len(CACHE_INTERVALS) * len(GUIDANCE_SHARES)
    assert len(space) == len(searched) * per_steps
    euler_10 = {c.guidance_steps for c in space if (c.scheduler, c.steps) == ("euler", 10)}
    assert euler_10 == {None, 8, 5}  # every step, then 3/4 and 1/2 of 10 rounded up


def test_lists_name_schedulers_with_steps_and_guidance_at_or_past_the_steps_is_every_step(tiny_bundle, base):
    space = candidates(tiny_bundle, "onnxruntime", base, "fp32", "euler:8,edm-dpmsolver", "1,3", "all,4,8")
    assert space[0].steps == 25 and len(space) == len(set(space))
    assert {(c.scheduler, c.steps) for c in space[1:]} == {("euler", 8), ("edm-dpmsolver", 15),
                                                           ("edm-dpmsolver", 10), ("edm-dpmsolver", 8)}
    assert {c.guidance_steps for c in space if (c.scheduler, c.steps) == ("euler", 8)} == {None, 4}


@pytest.mark.parametrize("given, error, message", [
    ({"precisions": "int8"}, BundleError, "has no int8 graph for unet"),
    ({"precisions": "fp9"}, InputError, "unknown precision 'fp9'"),
    ({"schedulers": "euler:x"}, InputError, "NAME or NAME:STEPS items, got 'euler:x'"),
    ({"schedulers": "nope"}, InputError, "unknown scheduler 'nope'"),
    ({"cache_intervals": "1,two"}, InputError, "--cache-interval takes comma-separated integers"),
    ({"guidance_steps": "-1"}, InputError, "guidance steps must be 0 or more"),
])
def test_bad_lists_are_one_line(tiny_bundle, base, given, error, message):
    with pytest.raises(error, match=message):
        candidates(tiny_bundle, "onnxruntime", base, **given)


def test_a_precision_the_backend_does_not_run_is_refused(tiny_bundle, base):
    with pytest.raises(InputError, match="the torch backend runs fp32, fp16, not int8"):
        candidates(tiny_bundle, "torch", base, precisions="int8")


def test_floors_fast_balanced_exact():
    fast, balanced, exact = floors(30, 0.95)
    assert (fast.min_psnr_db, fast.min_ssim) == (30, 0.95)
    assert balanced.min_psnr_db == 40 and balanced.min_ssim == pytest.approx(0.995)
    assert exact.identical and exact.min_psnr_db == PSNR_CAP_DB and not balanced.identical
    assert fast.met(30, 0.95) and not fast.met(29.9, 1.0) and not fast.met(31, 0.94)
    assert floors(None, 0.9)[0].met(1.0, 0.9) and floors(30, None)[1].describe() == "PSNR >= 40 dB"
    for bad in ((None, None), (0, None), (float("nan"), None), (None, 1.5)):
        with pytest.raises(InputError):
            floors(*bad)
