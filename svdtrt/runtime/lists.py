"""Comma-separated lists given on the command line (``bench --precisions fp32,int8``, ``tune
--cache-interval 1,2,3``): names checked against a registry, and integers, each refused with one
line that names the option, before minutes of measuring."""

from __future__ import annotations

from ..errors import InputError


def items(text: str) -> list[str]:
    """The items of a comma-separated list, stripped, empty ones left out: ``"a, b,"`` ->
    ``["a", "b"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_names(text: str | None, known: tuple[str, ...], what: str) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``, each checked against ``known``, each once; None for None.

    Raises:
        InputError: an empty list or a name not in ``known`` (the message lists ``known``).
    """
    if text is None:
        return None
    names = items(text)
    if not names:
        raise InputError(f"no {what} given; choose from {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown {what} '{unknown[0]}': choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def parse_integers(text: str, option: str, words: tuple[str, ...] = ()) -> list[int | None]:
    """Comma-separated integers of ``--option``; a word of ``words`` (``all``) stands for None.

    Raises:
        InputError: an empty list, or an item that is neither an integer nor one of ``words``.
    """
    values = []
    for item in items(text):
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
