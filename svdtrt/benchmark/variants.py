"""What ``svdtrt bench`` measures, from its comma-separated lists: the backends and precisions
(:func:`svdtrt.runtime.lists.parse_names`), and the work-reduction combinations (:func:`work_variants`), each
checked so that a mistake is one line before minutes of measuring."""

from __future__ import annotations

import itertools

from ..runtime.lists import parse_integers, parse_names
from ..runtime.schedulers import SCHEDULERS


def work_variants(schedulers: str, cache_intervals: str, guidance_steps: str | None) -> list[dict]:
    """``bench``'s ``--scheduler``, ``--cache-interval`` and ``--guidance-steps`` lists as one
    combination per row: each the ``scheduler``, ``cache_interval`` and ``guidance_steps`` keywords
    of :class:`~svdtrt.runtime.settings.SamplingSettings`. The full-compute base comes first (the
    first scheduler, no caching, guidance on every step), and each combination once.

    Args:
        schedulers: comma-separated names of :data:`~svdtrt.runtime.schedulers.SCHEDULERS`.
        cache_intervals: comma-separated integers.
        guidance_steps: comma-separated integers or ``all`` (guidance on every step, None in the
            settings); None is ``all``.
    Raises:
        InputError: an empty list, an unknown scheduler, or an item that is not an integer (the
            values' ranges are :meth:`~svdtrt.runtime.settings.SamplingSettings.check`'s).
    """
    names = parse_names(schedulers, tuple(SCHEDULERS), "scheduler")
    intervals = parse_integers(cache_intervals, "cache-interval")
    guidance = parse_integers(guidance_steps or "all", "guidance-steps", ("all",))
    base = {"scheduler": names[0], "cache_interval": 1, "guidance_steps": None}
    variants = [base] + [{"scheduler": a, "cache_interval": b, "guidance_steps": c}
                         for a, b, c in itertools.product(names, intervals, guidance)]
    return [dict(v) for v in dict.fromkeys(tuple(v.items()) for v in variants)]

