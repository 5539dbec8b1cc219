"""What a user reads: console output that reads right in a pipe or a log file, a sweep that
says one line per job, and hints for the habits of other command-line tools."""

from __future__ import annotations

import pytest

from tests.conftest import run_trainkit
from trainkit.cli import main

TINY = [
    "data=synthetic",
    "data.num_samples=200",
    "model=mlp",
    "model.hidden=[16]",
    "trainer.max_epochs=2",
]


def assert_plain(text: str) -> None:
    """Lines as a log file wants them: none padded, none blank, no control characters."""
    lines = text.splitlines()
    assert lines, "nothing printed"
    for line in lines:
        assert line == line.rstrip(), f"padded: {line!r}"
        assert line.strip(), "a blank line"
        assert "\x1b" not in line, f"a control sequence: {line!r}"


def test_piped_output_is_plain_lines_never_padded_or_wrapped(tmp_path):
    run_dir = tmp_path / ("a-long-directory-name-" * 4) / "run"
    result = run_trainkit("train", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_plain(result.stdout)
    lines = result.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 2
    # A path longer than 80 columns stays on its line, ready to paste.
    assert f"run directory: {run_dir}" in lines
    assert f"compare runs:  tensorboard --logdir {run_dir.parent}" in lines


def test_a_sweep_says_one_line_a_job_and_the_ranked_table(tmp_path):
    result = run_trainkit(
        "train", "-m", *TINY, "optimizer=adam,sgd", "hydra.sweep.dir='my sweep'", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert_plain(result.stdout)
    lines = result.stdout.splitlines()
    for job in (0, 1):
        (line,) = [line for line in lines if line.startswith(f"[job {job}] ")]
        assert line.startswith(f"[job {job}] done: val/acc ") and "test/acc" in line
    assert not any(line.startswith("epoch ") for line in lines)  # in each job's train.log
    assert "epoch   2" in (tmp_path / "my sweep" / "0_optimizer=adam" / "train.log").read_text()
    assert any("2 jobs ranked by val/acc" in line for line in lines)
    # Ready to paste: the path is quoted for the shell.
    assert f"compare jobs:  tensorboard --logdir '{tmp_path / 'my sweep'}'" in lines


@pytest.mark.parametrize(
    ("words", "meant"),
    [
        (["--lr", "0.1"], "did you mean optimizer.lr=0.1?"),
        (["--lr=0.1"], "did you mean optimizer.lr=0.1?"),
        (["--optimizer", "adam"], "did you mean optimizer=adam?"),
        (["optimizer", "adam"], "did you mean optimizer=adam?"),
        (["--max-epochs", "5"], "did you mean trainer.max_epochs=5?"),
        (["schedular.warmup_epochs=3"], "did you mean scheduler.warmup_epochs=3?"),
        (["optmizer=adam"], "did you mean 'optimizer'?"),
    ],
)
def test_habits_of_other_clis_get_the_override_they_meant(
    words, meant, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *words])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("trainkit: error: ") and line.endswith(meant) or meant in line, line
    assert list(tmp_path.iterdir()) == []
