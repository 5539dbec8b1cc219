"""trainkit.paths: the bundled config and recipes, and whether run directories can be written."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from trainkit import paths
from trainkit.errors import UserError
from trainkit.paths import check_writable


def test_config_and_recipes_are_found():
    assert (paths.config_dir() / "train.yaml").is_file()
    assert paths.recipes_dir().is_dir()


def test_a_writable_directory_passes_and_nothing_is_left_behind(tmp_path):
    check_writable(tmp_path, "hydra.run.dir")
    check_writable(tmp_path / "outputs" / "2024-01-01" / "12-00-00-000000", "hydra.run.dir")
    assert list(tmp_path.iterdir()) == []  # no probe file, no directory made


def test_a_relative_directory_is_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_writable(Path("outputs/2024-01-01"), "hydra.run.dir")
    (tmp_path / "outputs").write_text("not a directory")
    with pytest.raises(UserError, match=r"under outputs/2024-01-01: \S+/outputs is a file"):
        check_writable(Path("outputs/2024-01-01"), "hydra.run.dir")


def test_a_path_under_a_file_is_one_line(tmp_path):
    """Even root cannot make a directory inside a regular file (NotADirectoryError)."""
    (tmp_path / "file.txt").write_text("x")
    directory = tmp_path / "file.txt" / "outputs" / "2024-01-01"
    with pytest.raises(UserError) as error:
        check_writable(directory, "hydra.run.dir")
    assert str(error.value) == (
        f"cannot write run directories under {directory}: {tmp_path / 'file.txt'} is a file, "
        "not a directory; set hydra.run.dir=SOMEWHERE_WRITABLE"
    )
    with pytest.raises(UserError, match=r"file\.txt is a file, not a directory; set hydra\.sweep"):
        check_writable(tmp_path / "file.txt", "hydra.sweep.dir")


@pytest.mark.parametrize("relative", [False, True])
def test_permission_denied_names_the_directory_and_the_key(relative, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    directory = Path("outputs/today") if relative else tmp_path / "outputs" / "today"
    with pytest.raises(UserError) as error:
        check_writable(directory, "hydra.run.dir")
    fix = " or run from a writable directory" if relative else ""
    assert str(error.value) == (
        f"cannot write run directories under {tmp_path} (permission denied); "
        f"set hydra.run.dir=SOMEWHERE_WRITABLE{fix}"
    )


def test_writing_is_tried_when_os_access_says_yes(tmp_path, monkeypatch):
    """os.access trusts permission bits; a read-only mount refuses root all the same."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match=rf"^cannot write run directories under {tmp_path} "):
        check_writable(tmp_path / "outputs", "hydra.run.dir")
    with pytest.raises(UserError, match=r"\(read-only file system\); set hydra\.run\.dir="):
        check_writable(tmp_path / "outputs", "hydra.run.dir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_a_read_only_directory_is_refused(tmp_path):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"read_only \(permission denied\); set hydra"):
            check_writable(read_only / "outputs", "hydra.run.dir")
    finally:
        read_only.chmod(0o755)
