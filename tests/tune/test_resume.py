"""A tune killed at any instant loses at most the candidate in flight, and the bundle it applies
profiles to stays verified (docs/architecture.md, "Tuning", "Transactions"). Commands run as a
user runs them, in a subprocess of ``python -m svdtrt`` killed with SIGKILL at a named instant
(``SVDTRT_KILL_AT``, :func:`svdtrt.publishing.checkpoint`)."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from svdtrt.bundle.store import Bundle
from tests.test_transactions import assert_old_or_new, snapshot, svdtrt

from .conftest import tune_args


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()[1:]]


def _clips(out) -> list[tuple]:
    """Every clip the journal holds, as (candidate, purpose, image sha256, seed)."""
    return [(json.dumps(r["candidate"], sort_keys=True), r["purpose"], i["sha256"], i["seed"])
            for r in _records(out) for i in r["images"]]


@pytest.mark.slow
def test_a_tune_killed_after_a_candidate_continues_without_recomputing_it(tiny_bundle, tune_images, tuned, tmp_path,
                                                                          run_cli):
    out = tmp_path / "tune"
    done = svdtrt(*tune_args(tiny_bundle.path, out, tune_images), kill_at="tune-candidate")
    assert done.returncode == -signal.SIGKILL, done.stderr
    [first] = _records(out)  # killed right after the reference's record was appended whole
    assert first["candidate"]["steps"] == 25 and len(first["images"]) == 2
    references = {p.name: p.stat() for p in (out / "reference").iterdir()}
    assert len(references) == 2

    code, stdout, err = run_cli(*tune_args(tiny_bundle.path, out, tune_images))
    assert code == 0, err
    assert "2 from the journal" in stdout
    clips = _clips(out)
    assert len(clips) == len(set(clips))  # nothing finished was made again
    # the killed run and the re-run made exactly the clips of one whole tune
    whole = json.loads((tuned[1] / "results.json").read_text())["clips_made"]
    assert json.loads((out / "results.json").read_text())["clips_made"] == whole - 2
    for name, stat in references.items():  # the cached reference clips were read, not remade
        assert (out / "reference" / name).stat().st_mtime_ns == stat.st_mtime_ns


@pytest.mark.slow
def test_apply_killed_leaves_the_old_bundle_verified_and_the_next_apply_the_new(tiny_bundle, tune_images, tuned,
                                                                                 tmp_path, run_cli):
    """Killed at the commit (the other instants of a bundle transaction: tests/test_transactions.py)."""
    bundle = shutil.copytree(tiny_bundle.path, tmp_path / "b")
    out = shutil.copytree(tuned[1], tmp_path / "tune")  # a finished tune: applying makes no clip
    old = snapshot(bundle)
    done = svdtrt(*tune_args(bundle, out, tune_images, "--apply"), kill_at="commit")
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert assert_old_or_new(bundle, old) == "old"
    assert run_cli(*tune_args(bundle, out, tune_images, "--apply"))[0] == 0
    assert run_cli("verify", bundle)[0] == 0
    assert list(Bundle.open(bundle).manifest.profiles) == ["fast", "balanced", "exact"]


def test_apply_replaces_profiles_only_with_force(tuned, tune_images, tmp_path, run_cli):
    bundle = shutil.copytree(tuned[0], tmp_path / "b")
    out = shutil.copytree(tuned[1], tmp_path / "tune")
    before = (bundle / "manifest.json").read_bytes()
    code, _, err = run_cli(*tune_args(bundle, out, tune_images, "--apply"))
    assert code == 2 and err.count("\n") == 1
    assert "already has profile(s) fast, balanced, exact; pass --force" in err
    assert (bundle / "manifest.json").read_bytes() == before
    code, stdout, _ = run_cli(*tune_args(bundle, out, tune_images, "--apply", "--force"))
    assert code == 0 and "profiles fast, balanced, exact written" in stdout
    assert Bundle.open(bundle).manifest.profiles["fast"].settings.steps == 12


@pytest.mark.parametrize("make, message", [
    (lambda out: out.write_text("x"), "is a file"),
    (lambda out: (out.mkdir(), (out / "notes.txt").write_text("mine")), "is not a tune folder"),
])
def test_an_out_that_is_not_a_tune_folder_is_left_alone(tiny_bundle, tune_images, tmp_path, run_cli, make, message):
    out = tmp_path / "out"
    make(out)
    code, _, err = run_cli(*tune_args(tiny_bundle.path, out, tune_images))
    assert code == 2 and message in err and err.count("\n") == 1
    assert out.is_file() or (out / "notes.txt").read_text() == "mine"


def test_a_line_half_written_by_a_killed_tune_is_cut_off(tuned, tune_images, tmp_path, run_cli):
    out = shutil.copytree(tuned[1], tmp_path / "tune")
    whole = (out / "candidates.jsonl").read_bytes()
    with open(out / "candidates.jsonl", "ab") as f:
        f.write(b'{"kind": "candidate", "candidate": {"backend": "onnx')  # a write the kill cut short
    code, stdout, err = run_cli(*tune_args(tuned[0], out, tune_images))
    assert code == 0, err
    assert (out / "candidates.jsonl").read_bytes() == whole  # cut off; nothing was left to measure
    assert "0 clips made" in stdout
