"""The comma-separated lists bench and tune take (svdtrt/runtime/lists.py): names checked against a
registry, integers with a word for None, and one-line refusals."""

from __future__ import annotations

import pytest

from svdtrt.errors import InputError
from svdtrt.runtime.lists import parse_integers, parse_names


def test_parse_names():
    assert parse_names(None, ("a", "b"), "backend") is None
    assert parse_names(" b, a,b ", ("a", "b"), "backend") == ["b", "a"]
    with pytest.raises(InputError, match="unknown backend 'c': choose from a, b"):
        parse_names("a,c", ("a", "b"), "backend")
    with pytest.raises(InputError, match="no backend given"):
        parse_names(" , ", ("a", "b"), "backend")


def test_parse_integers():
    assert parse_integers("3, all,1", "guidance-steps", ("all",)) == [3, None, 1]
    with pytest.raises(InputError, match="--cache-interval takes comma-separated integers, got 'all'"):
        parse_integers("2,all", "cache-interval")
    with pytest.raises(InputError, match="--cache-interval is empty"):
        parse_integers(",", "cache-interval")
