"""The search (svdtrt/tune/search.py; docs/architecture.md, "Tuning"): it finds the answers an
exhaustive run of the same space finds while making fewer clips, and a time budget ends it with the
answers so far."""

from __future__ import annotations

import json
import shutil

from svdtrt.tune import results as R

from .conftest import tune_args


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def _by_steps(results: dict) -> dict[int, dict]:
    return {c["settings"]["steps"]: c for c in results["candidates"]}


def test_the_search_finds_the_exhaustive_answers_with_fewer_clips(tuned, tune_images, tmp_path, run_cli):
    bundle, out = tuned
    search = _results(out)
    candidates = _by_steps(search)
    # what the search skipped: 6 steps fails the floor on its first image (25 dB < 30 dB); 40 steps
    # is predicted slower than the reference, which meets every floor
    assert candidates[6]["status"] == R.FAILS_EVERY_FLOOR and len(candidates[6]["clips"]) == 1
    assert candidates[40]["status"] == R.PREDICTED_SLOWER and candidates[40]["clips"] == []
    assert candidates[40]["predicted_seconds"] > candidates[25]["seconds_per_clip"]
    assert candidates[12]["status"] == R.COMPLETE and candidates[12]["min_psnr_db"] >= 30
    assert search["recommendations"]["fast"]["steps"] == 12 and search["recommendations"]["exact"]["steps"] == 25

    # The exhaustive run continues the same journal: every candidate on every image, nothing pruned.
    # Its new clips are timed in another run, at another load: as if the reference had been timed
    # at a load that made it 3x slower, it then looks slower than 40 steps, which it dominates by
    # counted work (fewer UNet FLOPs, identical) and so stays the balanced answer (CI once saw this).
    exhaustive_out = shutil.copytree(out, tmp_path / "exhaustive")
    journal = exhaustive_out / "candidates.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    reference = json.loads(lines[1])
    assert reference["candidate"]["steps"] == 25
    for clip in reference["images"]:
        clip["seconds"] *= 3
    journal.write_text("".join([lines[0], json.dumps(reference) + "\n", *lines[2:]]))
    code, stdout, _ = run_cli(*tune_args(bundle, exhaustive_out, tune_images, "--exhaustive"))
    assert code == 0, stdout
    exhaustive = _results(exhaustive_out)
    assert all(c["status"] == R.COMPLETE for c in exhaustive["candidates"])
    assert exhaustive["recommendations"] == search["recommendations"]
    # it made exactly the clips the search skipped: 6 steps on the second image, 40 steps on both
    assert exhaustive["clips_made"] == 3
    assert _by_steps(exhaustive)[6]["min_psnr_db"] < 30  # the first pass's verdict held on every image


def test_a_time_budget_ends_the_search_with_the_answers_so_far(tuned, tune_images, tmp_path, run_cli):
    bundle, out = tuned
    out = shutil.copytree(out, tmp_path / "tune")
    lines = (out / "candidates.jsonl").read_text().splitlines(keepends=True)
    assert json.loads(lines[1])["candidate"]["steps"] == 25  # the reference's record comes first
    (out / "candidates.jsonl").write_text("".join(lines[:2]))
    # 0.001 min: less than any candidate's predicted clip, more than reusing the reference's record
    code, stdout, _ = run_cli(*tune_args(bundle, out, tune_images, "--time-budget", "0.001"))
    assert code == 0
    assert "the time budget ended the search" in stdout
    results = _results(out)
    assert results["stopped_by_budget"] and results["clips_made"] == 0
    assert {c["settings"]["steps"]: c["status"] for c in results["candidates"]} == {
        25: R.COMPLETE, 6: R.OVER_BUDGET, 12: R.OVER_BUDGET, 40: R.OVER_BUDGET}
    assert {s["steps"] for s in results["recommendations"].values()} == {25}
