"""``svdtrt batch`` on a local Ray with the tiny bundle: a worker killed mid-clip costs only that
clip's retry, every clip is published once with a complete journal, a re-run does no work, and a
failed clip is recorded with its one-line message and retried by the next run, and a run with
nothing left to make joins no Ray."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import PIL.Image
import pytest

from svdtrt.media.video import read_mp4

from .conftest import kill, processes

pytestmark = pytest.mark.slow

#: Steps per clip: about a second each on the tiny bundle, so that a kill lands mid-clip.
STEPS = 12


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six real photographs (scikit-image's samples and a mirrored astronaut)."""
    from svdtrt.media.images import SAMPLE_IMAGES, sample_image

    folder = tmp_path_factory.mktemp("images")
    for name in SAMPLE_IMAGES:
        sample_image(name).save(folder / f"{name}.png")
    sample_image("astronaut").transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirrored.jpg")
    return folder


def _job(tiny_bundle, images, out, workers=2):
    from svdtrt.runtime.pipeline import SamplingSettings
    from svdtrt.serving.batch import BatchJob, list_images
    from svdtrt.serving.worker import WorkerOptions

    return BatchJob(WorkerOptions(str(tiny_bundle.path), cpus=1), list_images(images), out,
                    SamplingSettings(frames=4, height=64, width=64, steps=STEPS, seed=3), workers=workers)


def test_a_worker_killed_mid_run_costs_one_retry_and_a_rerun_does_no_work(local_ray, tiny_bundle, images, tmp_path):
    from svdtrt.serving.batch import JOURNAL, run_batch

    out = tmp_path / "out"
    job = _job(tiny_bundle, images, out)
    result = {}
    driver = threading.Thread(target=lambda: result.update(summary=run_batch(job, progress=False)))
    driver.start()
    deadline, victim = time.monotonic() + 180, None
    while victim is None and time.monotonic() < deadline:
        busy = processes("ray::ClipWorker.make")  # Ray's title while a worker makes a clip
        if busy and (out / JOURNAL).exists():  # mid-run: some clip done, another being made
            originals = set(processes("ray::ClipWorker"))
            victim = busy[0]
            kill(victim)
        time.sleep(0.05)
    driver.join(300)
    assert victim is not None, "no worker was seen making a clip"
    summary = result["summary"]
    names = sorted(f"{p.stem}.mp4" for p in images.iterdir())
    assert len(names) == 6 and sorted(summary.made) == names and not summary.failed and not summary.skipped
    # every clip once, complete; nothing else but the journal and its lock file
    assert sorted(p.name for p in out.iterdir()) == sorted(names + [JOURNAL, f".{JOURNAL}.lock"])
    for name in names:
        assert read_mp4(out / name).shape == (4, 64, 64, 3)
    lines = (out / JOURNAL).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["output"] for r in records) == names and {r["status"] for r in records} == {"ok"}
    assert all(r["seed"] == 3 and r["settings"]["steps"] == STEPS and r["timings"]["total"] > 0 for r in records)
    # the killed worker's clip was made again by its restarted process
    assert len(originals) == 2 and victim not in processes("ray::ClipWorker")
    assert {int(r["worker"].rsplit(":", 1)[1]) for r in records} - originals

    journal, stamps = (out / JOURNAL).read_bytes(), {n: (out / n).stat().st_mtime_ns for n in names}

    def no_ray():
        raise AssertionError("a batch with nothing left to make joined Ray")

    again = run_batch(job, progress=False, join=no_ray)
    assert again.made == [] and again.failed == [] and sorted(again.skipped) == names
    assert (out / JOURNAL).read_bytes() == journal
    assert {n: (out / n).stat().st_mtime_ns for n in names} == stamps


def test_failed_clips_are_recorded_and_retried_by_the_next_run(local_ray, tiny_bundle, images, run_cli, tmp_path,
                                                               monkeypatch, caplog):
    from svdtrt.serving.batch import JOURNAL

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{images / 'coffee.png'}\n\nbroken.png\n")
    out = tmp_path / "out"
    args = ("batch", tiny_bundle.path, "--images", listing, "--out", out, "--workers", 2, "--steps", 2,
            "--format", "npy", "--seed", 5)
    code, stdout, err = run_cli(*args)
    assert code == 1 and "1 clip(s) made, 0 already" in stdout and "1 failed" in stdout
    assert "failed: broken.npy; run the same command again to retry them" in err
    first = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]
    by_output = {r["output"]: r for r in first}
    assert by_output["coffee.npy"]["status"] == "ok" and by_output["broken.npy"]["status"] == "failed"
    code, _, cli_err = run_cli("run", tiny_bundle.path, "--image", broken, "--out", tmp_path / "c.mp4")
    assert by_output["broken.npy"]["error"] == cli_err.strip().removeprefix("svdtrt: error: ")
    assert not (out / "broken.npy").exists()

    # the same clip as 'svdtrt run' with the same seed
    code, _, err = run_cli("run", tiny_bundle.path, "--image", images / "coffee.png", "--out", tmp_path / "r.mp4",
                           "--save-frames", tmp_path / "r.npy", "--steps", 2, "--seed", 5)
    assert code == 0, err
    assert np.array_equal(np.load(out / "coffee.npy"), np.load(tmp_path / "r.npy"))

    PIL.Image.open(images / "chelsea.png").save(broken)  # fixed: the next run makes it, and only it
    code, stdout, err = run_cli(*args)
    assert code == 0 and "1 clip(s) made, 1 already" in stdout and "0 failed" in stdout, err
    records = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]
    assert records[:2] == first and [(r["output"], r["status"]) for r in records[2:]] == [("broken.npy", "ok")]
    assert np.load(out / "broken.npy").shape == (4, 64, 64, 3)

    # nothing left to make: no Ray is joined; -v logs the loading
    from svdtrt.serving import preflight

    def no_ray(*args, **kwargs):
        raise AssertionError("a batch with nothing left to make joined Ray")

    monkeypatch.setattr(preflight, "connect", no_ray)
    code, stdout, err = run_cli(*args, "-v")
    assert code == 0 and "0 clip(s) made, 2 already in" in stdout and "0 failed" in stdout, err
    info = [r.getMessage() for r in caplog.records if r.name.startswith("svdtrt") and r.levelno == logging.INFO]
    assert any(m.startswith("svdtrt batch: loading ONNX Runtime and the bundle's manifest took ") for m in info)
