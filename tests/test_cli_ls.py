"""`trainkit ls`: every registered component, with its parameters and defaults."""

from __future__ import annotations

import pytest

from trainkit.cli import main
from trainkit.registry import SCHEDULERS, load_components


def test_ls_lists_every_component_of_a_group(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    load_components()
    main(["ls", "scheduler"])
    out = capsys.readouterr().out
    for name in SCHEDULERS.names():
        assert f"│ {name} " in out
    assert "step_size: an integer >= 1 = 30" in out
    assert "optimizer" not in out.split("\n")[0]


def test_ls_without_a_group_lists_them_all(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    main(["ls"])
    out = capsys.readouterr().out
    for group in ("data", "model", "loss", "optimizer", "scheduler", "augmentation",
                  "regularization"):  # fmt: skip
        assert f"{group}  ({group}=NAME)" in out


def test_ls_unknown_group(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ls", "optimzer"])
    assert exit_info.value.code == 2
    assert "unknown group 'optimzer'; did you mean 'optimizer'?" in capsys.readouterr().err
