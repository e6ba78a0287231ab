"""The batch's inputs and journal, without Ray: which images a folder or a list names (never a
FIFO or a device), their output names, a journal whose every line is a complete record, an output
folder batch cannot use, a file at an output name that the journal did not record (a conflict,
left alone), and a full disk while journaling."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from svdtrt.errors import InputError
from svdtrt.media.images import list_images
from svdtrt.publishing import Journal
from svdtrt.serving.batch import output_names


def test_a_folder_lists_its_images_and_a_list_its_lines(tmp_path):
    for name in ("b.PNG", "a.jpg", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    listing = tmp_path / "list.txt"
    listing.write_text("# clips for today\na.jpg\n\n  /elsewhere/c.png  \n")
    assert list_images(listing) == [tmp_path / "a.jpg", tmp_path.parent / "/elsewhere/c.png"]


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing", "not found"),
    (lambda p: p, "has no image files"),
    (lambda p: (p / "empty.txt").write_text("# nothing\n") and p / "empty.txt", "names no image"),
])
def test_no_images_is_one_line(tmp_path, make, needle):
    with pytest.raises(InputError, match=needle):
        list_images(make(tmp_path))


def test_two_images_with_one_output_name_are_refused(tmp_path):
    assert output_names([tmp_path / "a.png", tmp_path / "b.jpg"], "mp4") == {tmp_path / "a.png": "a.mp4",
                                                                            tmp_path / "b.jpg": "b.mp4"}
    with pytest.raises(InputError, match="would both write 'a.mp4'"):
        output_names([tmp_path / "a.png", tmp_path / "x" / "a.jpg"], "mp4")


def test_the_journal_appends_whole_lines_and_cuts_off_a_killed_writers_partial_line(tmp_path):
    journal = Journal(tmp_path / "clips.jsonl")
    journal.append({"output": "a.mp4", "status": "ok"})
    with open(journal.path, "ab") as f:  # what a driver killed inside a write would leave
        f.write(b'{"output": "b.mp4", "sta')
    journal.repair()
    journal.append({"output": "b.mp4", "status": "failed", "error": "one line"})
    lines = journal.path.read_text().splitlines()
    assert [json.loads(line)["output"] for line in lines] == ["a.mp4", "b.mp4"]
    assert journal.records()[1]["error"] == "one line"


def _job(bundle_path, images, out, fmt="mp4"):
    from svdtrt.runtime.settings import SamplingSettings
    from svdtrt.serving.batch import BatchJob
    from svdtrt.serving.worker import WorkerOptions

    return BatchJob(WorkerOptions(str(bundle_path), cpus=1), images, out,
                    SamplingSettings(frames=4, height=64, width=64, steps=1), fmt=fmt)


def test_a_file_at_an_output_name_that_the_journal_did_not_record_is_a_conflict(tiny_bundle, tmp_path):
    """It used to be counted as 'already in' (no clip, no journal line): a user's file taken for a clip."""
    from svdtrt.serving.batch import JOURNAL, run_batch

    image = tmp_path / "cat.png"
    image.write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat.mp4").write_bytes(b"my own video")
    summary = run_batch(_job(tiny_bundle.path, [image], out), progress=False)  # nothing to make: no Ray
    assert (summary.made, summary.skipped, summary.failed) == ([], [], ["cat.mp4"])
    [record] = Journal(out / JOURNAL).records()
    assert record["status"] == "failed" and "exists but clips.jsonl does not record it as made" in record["error"]
    assert "\n" not in record["error"] and (out / "cat.mp4").read_bytes() == b"my own video"
    Journal(out / JOURNAL).append({"output": "cat.mp4", "status": "ok"})  # one the journal records: ours
    assert run_batch(_job(tiny_bundle.path, [image], out), progress=False).skipped == ["cat.mp4"]


def test_a_full_disk_while_journaling_is_one_line_and_leaves_no_unrecorded_clip(tmp_path, monkeypatch):
    import errno
    import io

    import numpy as np

    from svdtrt.serving import batch

    out = tmp_path / "out"
    out.mkdir()
    job = _job("unused", [tmp_path / "a.png"], out, fmt="npy")
    frames = io.BytesIO()
    np.save(frames, np.zeros((4, 8, 8, 3), np.float32))

    def disk_full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch.Journal, "append", disk_full)
    with pytest.raises(InputError, match="the disk is full while writing .*clips.jsonl.*the clips recorded so far"):
        batch._finish(job, tmp_path / "a.png", "a.npy", {"status": "ok", "data": frames.getvalue()},
                      batch.Journal(out / batch.JOURNAL), batch.BatchSummary(), {}, 0.0)
    assert os.listdir(out) == []


@pytest.mark.parametrize("make, needle", [
    (lambda out: (out / "clips.jsonl").mkdir(parents=True), "is a folder, where batch keeps its journal"),
    (lambda out: out.parent.joinpath("out").write_text("x"), "--out '{out}' is a file; give a folder"),
])
def test_an_output_folder_batch_cannot_use_is_one_line(tmp_path, make, needle):
    from svdtrt.serving.batch import check_out

    out = tmp_path / "out"
    make(out)
    with pytest.raises(InputError, match=re.escape(needle.format(out=out))):
        check_out(out)


def test_an_image_list_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "list.txt")
    with pytest.raises(InputError, match="is a FIFO; give a folder of images or a text file"):
        list_images(tmp_path / "list.txt")
    with pytest.raises(InputError, match="'/dev/zero' is a device"):
        list_images(Path("/dev/zero"))
