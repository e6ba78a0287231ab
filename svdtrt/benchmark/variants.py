"""What ``svdtrt bench`` measures, from its comma-separated lists: the backends and precisions
(:func:`parse_names`), and the work-reduction combinations (:func:`work_variants`), each checked
so that a mistake is one line before minutes of measuring."""

from __future__ import annotations

import itertools

from ..errors import InputError
from ..runtime.schedulers import SCHEDULERS


def parse_names(text: str | None, known: tuple[str, ...], what: str) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``, each checked against ``known``; None for None.

    Raises:
        InputError: an empty list or a name not in ``known``.
    """
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError(f"no {what} given; choose from {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown {what} '{unknown[0]}': choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


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
    intervals = _integers(cache_intervals, "cache-interval")
    guidance = _integers(guidance_steps or "all", "guidance-steps", ("all",))
    base = {"scheduler": names[0], "cache_interval": 1, "guidance_steps": None}
    variants = [base] + [{"scheduler": a, "cache_interval": b, "guidance_steps": c}
                         for a, b, c in itertools.product(names, intervals, guidance)]
    return [dict(v) for v in dict.fromkeys(tuple(v.items()) for v in variants)]


def _integers(text: str, option: str, words: tuple[str, ...] = ()) -> list[int | None]:
    """Comma-separated integers (a word of ``words`` stands for None), for ``--option``'s message."""
    values = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item in words:
            values.append(None)
            continue
        try:
            values.append(int(item))
        except ValueError:
            raise InputError(f"--{option} takes comma-separated integers{' or ' + '/'.join(words) if words else ''}, "
                             f"got '{item}'") from None
    if not values:
        raise InputError(f"--{option} is empty")
    return values
