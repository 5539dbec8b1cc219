"""trainkit.rundir: new files and directories that trainkit owns, and only those."""

from __future__ import annotations

import os

import pytest

from trainkit.errors import UserError
from trainkit.rundir import write_new_file


def test_a_chosen_name_that_is_taken_is_refused_and_left_as_it_was(tmp_path):
    taken = tmp_path / "predictions.csv"
    taken.write_text("the user's")
    with pytest.raises(UserError, match="predictions.csv exists, and trainkit does not over"):
        write_new_file(taken, b"new", "output")
    assert taken.read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


def test_a_default_name_taken_meanwhile_moves_on_to_the_next_free_one(tmp_path):
    """Two `trainkit predict` runs in one folder both planned predictions.csv; the one that
    finishes second writes predictions-3.csv (-2 is a dangling link: taken too)."""
    (tmp_path / "predictions.csv").write_text("the other run's")
    os.symlink(tmp_path / "nowhere", tmp_path / "predictions-2.csv")
    written = write_new_file(tmp_path / "predictions.csv", b"mine", "output", or_next_free=True)
    assert written == tmp_path / "predictions-3.csv"
    assert written.read_bytes() == b"mine"
    assert (tmp_path / "predictions.csv").read_text() == "the other run's"


def test_missing_folders_are_made_and_the_path_is_returned(tmp_path):
    written = write_new_file(tmp_path / "a" / "b" / "model.onnx", b"x", "output")
    assert written.read_bytes() == b"x"


def test_a_folder_refused_for_what_it_holds_is_not_even_written_to_and_removed_from(tmp_path):
    """The test that the folder is writable (a file made and removed) comes after the
    refusal: the folder's modification time stays."""
    from trainkit.rundir import claim_new

    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("mine")
    os.utime(full, ns=(10**18, 10**18))
    with pytest.raises(UserError, match="hydra.run.dir="):
        claim_new(full, "hydra.run.dir")
    assert full.stat().st_mtime_ns == 10**18
    assert os.listdir(full) == ["mine.txt"]


def test_a_path_back_out_of_a_missing_folder_makes_no_folder(tmp_path):
    """nonexist/../x.png: the shell refuses it too; made, nonexist/ would be left behind."""
    with pytest.raises(UserError, match=r"goes through a folder that does not exist"):
        write_new_file(tmp_path / "nonexist" / ".." / "x.png", b"x", "output")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "there").mkdir()
    assert write_new_file(tmp_path / "there" / ".." / "x.png", b"x", "output").is_file()
