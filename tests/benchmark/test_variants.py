"""bench's lists (svdtrt/benchmark/variants.py): the combinations it measures, and one-line refusals."""

from __future__ import annotations

import pytest

from svdtrt.benchmark.variants import work_variants
from svdtrt.errors import InputError


def test_the_full_compute_base_comes_first_and_each_combination_once():
    variants = work_variants("edm-euler, euler", "2,1,2", "all,1")
    assert variants[0] == {"scheduler": "edm-euler", "cache_interval": 1, "guidance_steps": None}
    assert variants[1:] == [
        {"scheduler": s, "cache_interval": c, "guidance_steps": g}
        for s, c, g in [("edm-euler", 2, None), ("edm-euler", 2, 1), ("edm-euler", 1, 1),
                        ("euler", 2, None), ("euler", 2, 1), ("euler", 1, None), ("euler", 1, 1)]]


def test_no_guidance_list_is_guidance_on_every_step():
    assert work_variants("euler", "1", None) == [{"scheduler": "euler", "cache_interval": 1, "guidance_steps": None}]


@pytest.mark.parametrize("args, message", [
    (("nope", "1", None), "unknown scheduler 'nope': choose from euler, edm-euler, edm-dpmsolver, euler-ancestral"),
    ((",", "1", None), "no scheduler given; choose from euler, "),
    (("euler", "x", None), "--cache-interval takes comma-separated integers, got 'x'"),
    (("euler", " , ", None), "--cache-interval is empty"),
    (("euler", "1", "all,y"), "--guidance-steps takes comma-separated integers or all, got 'y'"),
])
def test_bad_lists_are_refused_with_one_line(args, message):
    with pytest.raises(InputError) as e:
        work_variants(*args)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
