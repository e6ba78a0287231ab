"""``svdtrt batch`` on a local Ray with the tiny bundle: a worker killed mid-clip costs only that
clip's retry, every clip is published once with a complete journal, a re-run does no work, and a
failed clip is recorded with its one-line message and retried by the next run, and a run with
nothing left to make joins no Ray."""

from __future__ import annotations

import dataclasses
import json
import re
import logging
import threading
import time
from pathlib import Path

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
    from svdtrt.media.images import list_images
    from svdtrt.serving.batch import BatchJob
    from svdtrt.serving.worker import WorkerOptions

    return BatchJob(WorkerOptions(str(tiny_bundle.path), cpus=1), list_images(images) if images else [], out,
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
    # every clip once, complete; nothing else but the journal (the lock file is in the user's cache)
    assert sorted(p.name for p in out.iterdir()) == sorted(names + [JOURNAL])
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


def test_images_that_are_not_regular_files_fail_in_one_line_each(local_ray, tiny_bundle, tmp_path):
    """A list naming a FIFO stalled the batch, and /dev/zero grew it to 4 GiB: only regular files of
    at most MAX_IMAGE_FILE_BYTES are read."""
    import os

    from svdtrt.media.images import list_images
    from svdtrt.serving.batch import JOURNAL, run_batch

    os.mkfifo(tmp_path / "fifo.png")
    listing = tmp_path / "list.txt"
    listing.write_text("fifo.png\n/dev/zero\n")
    out = tmp_path / "out"
    job = _job(tiny_bundle, None, out, workers=1)
    summary = run_batch(dataclasses.replace(job, images=list_images(listing)), progress=False)
    assert sorted(summary.failed) == ["fifo.mp4", "zero.mp4"] and summary.made == []
    errors = {r["output"]: r["error"] for r in (json.loads(line) for line in (out / JOURNAL).read_text().splitlines())}
    assert errors["fifo.mp4"] == \
        f"image '{tmp_path / 'fifo.png'}' is a FIFO, not a file; give the path of a PNG or JPEG file"
    assert errors["zero.mp4"] == "image '/dev/zero' is a device, not a file; give the path of a PNG or JPEG file"


def test_sigterm_stops_a_batch_in_one_line(tiny_bundle, images, tmp_path):
    """SIGTERM (docker stop, a job scheduler) ended a batch with Ray's C++ stack; now it is Ctrl-C's
    one line and exit code 130, and no worker is left running."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    driver = subprocess.Popen([sys.executable, "-m", "svdtrt", "batch", str(tiny_bundle.path), "--images", str(images),
                               "--out", str(tmp_path / "out"), "--workers", "1", "--steps", "500"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not [p for p in processes("ray::ClipWorker.make")
                                               if _child_of(p, driver.pid)]:
        time.sleep(0.2)
    assert driver.poll() is None, driver.communicate()
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)
    # Left out: the bar, and a line that a Ray worker's own C++ logger may write as the driver goes
    # ("task_manager.cc: Failed to push error to driver"): a log line of another process, racing the
    # driver's exit, not a stack dump. Ray's token-authentication notice is not left out: svdtrt
    # logs it at INFO (svdtrt/serving/cluster.py).
    lines = [line for line in err.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("clips:")
             and not re.match(r"\[\d{4}-\d\d-\d\d [\d:,]+ [A-Z] \d+ \d+\] \w+\.cc:\d+:", line)]
    assert driver.returncode == 130 and lines == ["svdtrt: interrupted; nothing was left half-written"], out + err
    assert "***" not in err and "Traceback" not in err and out == ""


def _child_of(pid: int, parent: int) -> bool:
    """Whether process ``pid`` descends from ``parent`` (Ray's worker processes are its grandchildren)."""
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == parent:
            return True
    return False
