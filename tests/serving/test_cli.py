"""``svdtrt serve`` and ``svdtrt batch`` refuse bad options with one line and exit code 2 before
Ray starts (no Ray is started by these tests)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("args, needle", [
    (("serve", "{bundle}", "--precision", "fp16"), "has no fp16 graph for image_encoder"),
    (("serve", "{bundle}", "--replicas", "0"), "--replicas must be at least 1, got 0"),
    (("serve", "{bundle}", "--max-queued", "-1"), "--max-queued must be 0 or more"),
    (("serve", "{bundle}", "--address", "127.0.0.1:1"), "cannot join the Ray cluster at '127.0.0.1:1'"),
    (("serve", "{tmp}/missing"), "not found"),
    (("batch", "{bundle}", "--images", "{tmp}/none", "--out", "{tmp}/out"), "'{tmp}/none' is not found"),
    (("batch", "{bundle}", "--images", "{tmp}", "--out", "{tmp}/out", "--steps", "0"), "steps must be at least 1"),
    (("batch", "{bundle}", "--images", "{tmp}", "--out", "{tmp}/out"), "has no image files"),
    (("batch", "{bundle}", "--images", "{tmp}", "--out", "{tmp}/out", "--workers", "0"), "--workers must be at least 1"),
    (("batch", "{bundle}", "--images", "{tmp}", "--out", "{tmp}/j"),
     "'{tmp}/j/clips.jsonl' is a folder, where batch keeps its journal (clips.jsonl); move it away"),
])
def test_bad_options_are_one_line_before_ray_starts(run_cli, tiny_bundle, tmp_path, args, needle):
    import sys

    if args[0] == "batch" and ("--workers" in args or "{tmp}/j" in args):
        (tmp_path / "a.png").write_bytes(b"x")  # listed: these checks come after the images'
    if "{tmp}/j" in args:
        (tmp_path / "j" / "clips.jsonl").mkdir(parents=True)  # it was an IsADirectoryError traceback
    started = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    fill = {"bundle": tiny_bundle.path, "tmp": tmp_path}
    code, _, err = run_cli(*[a.format(**fill) for a in args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("svdtrt: error: "), err
    assert needle.format(**fill) in lines[0]
    if not started:
        assert not ("ray" in sys.modules and sys.modules["ray"].is_initialized())


def test_ray_timing_out_at_start_is_one_line(monkeypatch):
    """Under load Ray's node may not come up in the 30 s Ray waits: Ray raises a bare Exception,
    which was a traceback. (Ray's own failure, injected: this machine cannot be overloaded on cue.)"""
    ray = pytest.importorskip("ray", reason="needs Ray: pip install 'svdtrt[serve]'")
    from svdtrt.errors import InputError
    from svdtrt.serving.cluster import connect

    def times_out(*args, **kwargs):  # Ray's own type: a bare Exception
        raise Exception(  # noqa: TRY002
            "The current node timed out during startup. This could happen because some of the raylet "
            "failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", times_out)
    with pytest.raises(InputError, match="Ray's node did not start within the 30 s Ray waits for it"):
        connect()
