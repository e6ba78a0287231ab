"""Joining Ray (svdtrt/serving/cluster.py): a local Ray starts with Ray's own default authentication
said explicitly, so Ray prints no warning about it, and a mode the environment sets is kept."""

from __future__ import annotations

import os

import pytest


def test_a_local_ray_starts_in_token_mode_unless_the_environment_says_otherwise(monkeypatch):
    ray = pytest.importorskip("ray", reason="needs Ray: pip install 'svdtrt[serve]'")
    from svdtrt.serving import cluster

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append((kwargs["address"], os.environ["RAY_AUTH_MODE"])))
    monkeypatch.setenv("RAY_AUTH_MODE", "unset")
    monkeypatch.delenv("RAY_AUTH_MODE")  # restored (or removed) after the test
    cluster.connect()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster.connect()
    assert seen == [("local", "token"), ("local", "disabled")]
