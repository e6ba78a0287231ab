"""The batch's inputs and journal, without Ray: which images a folder or a list names, their
output names, and a journal whose every line is a complete record."""

from __future__ import annotations

import json

import pytest

from svdtrt.errors import InputError
from svdtrt.serving.batch import Journal, list_images, output_names


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
