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
    assert "step_size: an integer >= 1 or null = null" in out
    assert "every scheduler also takes interval: one of 'step', 'epoch'" in out
    assert "warmup_epochs: a number >= 0 = 0.0" in out
    assert "optimizer" not in out.split("\n")[0]


def test_ls_shows_the_defaults_a_run_uses_and_plain_descriptions(capsys, monkeypatch):
    """The YAML's default wins over the builder's, as it does in a run."""
    monkeypatch.setenv("COLUMNS", "250")
    main(["ls", "optimizer", "model"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "│ sgd " in line or "│ resnet_cifar " in line]
    sgd = out[out.index("│ sgd ") : out.index("│ sgd ") + 2500]
    assert "weight_decay: a number >= 0 = 0.0005" in sgd  # conf/optimizer/sgd.yaml
    assert "nesterov: true or false = false" in sgd
    assert any("depth: an integer >= 8 of the form 6n+2 = 8" in row for row in rows)  # conf/model
    assert "``" not in out and ":class:" not in out


@pytest.mark.parametrize("group", ["trainer", "logger", "finetune", "debug"])
def test_ls_of_settings_points_to_train_help(group, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ls", group])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"trainkit: error: {group} is not a group of components: trainkit train --help lists "
        "its keys with their defaults and what they do\n"
    )


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


def test_ls_into_a_closed_pipe_ends_as_other_tools_do(tmp_path):
    """`trainkit ls | head -1`: 141 (SIGPIPE) with nothing on stderr, not rich's exit 1."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line is written
    try:
        lister = subprocess.run(
            [sys.executable, "-m", "trainkit", "ls", "optimizer"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (lister.returncode, lister.stderr) == (141, "")
