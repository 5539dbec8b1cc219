"""`trainkit compare`: the table of runs, the PNG of their curves, and its mistakes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_trainkit
from tests.test_sweeps import job_dir
from trainkit import cli
from trainkit.plotting import COLOURS, curves_figure

TINY = [
    "data=synthetic",
    "data.num_samples=120",
    "model=mlp",
    "model.hidden=[16]",
    "trainer.max_epochs=3",
    "logger.progress_bar=false",
]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """Two runs, SGD and Adam, as jobs 0 and 1 of a sweep."""
    cwd = tmp_path_factory.mktemp("compare")
    result = run_trainkit("train", "-m", "optimizer=sgd,adam", *TINY, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    (sweep,) = (cwd / "outputs" / "multirun").glob("*/*")
    return sweep


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_compare_two_runs_prints_their_metrics_and_draws_their_curves(sweep_dir, tmp_path):
    runs = [job_dir(sweep_dir, 0), job_dir(sweep_dir, 1)]
    result = run_trainkit("compare", *map(str, runs), "output=plots/curves.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    console = result.stdout
    for column in ("val/acc", "test/acc", "best_epoch", "train_time_s"):
        assert column in console
    for run, optimizer in zip(runs, ("sgd", "adam"), strict=True):
        summary = summary_of(run)
        row = next(line for line in console.splitlines() if f"optimizer={optimizer}" in line)
        assert f"{summary['val/acc']:.4f}" in row and f"{summary['test/acc']:.4f}" in row
        assert f" {summary['train_time_s']:.1f} " in row  # seconds, not 0.8000
    assert "every run: data=synthetic" in console  # what they share is said once

    image = Image.open(tmp_path / "plots" / "curves.png")
    assert image.format == "PNG" and image.size == (800, 450)


def test_a_sweep_dir_stands_for_its_jobs(sweep_dir, tmp_path):
    result = run_trainkit(
        "compare", str(sweep_dir), "metrics=val/loss,test/f1", "output=c.png", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "2 runs" in result.stdout and "test/f1" in result.stdout
    for job in (0, 1):
        assert f"{summary_of(job_dir(sweep_dir, job))['test/f1']:.4f}" in result.stdout
    assert (tmp_path / "c.png").is_file()


def test_a_failed_run_is_listed_with_its_error(sweep_dir, tmp_path, capsys, monkeypatch):
    failed = tmp_path / "2"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=-1\n")
    (failed / "failed.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    monkeypatch.setenv("COLUMNS", "200")
    cli.main(["compare", str(job_dir(sweep_dir, 0)), str(failed), f"output={tmp_path / 'c.png'}"])
    console = capsys.readouterr().out
    assert "failed: boom" in console and "optimizer.lr=-1" in console


def test_a_run_still_training_is_listed_as_such_not_as_failed(
    sweep_dir, tmp_path, capsys, monkeypatch
):
    import fcntl
    import os
    import shutil

    from trainkit.rundir import LOCK_FILE

    busy = tmp_path / "busy"
    shutil.copytree(job_dir(sweep_dir, 0), busy)
    (busy / "summary.json").unlink()  # not written until its test is done
    descriptor = os.open(busy / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # as its training process holds it
    try:
        monkeypatch.setenv("COLUMNS", "200")
        cli.main(["compare", str(busy), str(job_dir(sweep_dir, 1)), f"output={tmp_path / 'c.png'}"])
    finally:
        os.close(descriptor)
    console = capsys.readouterr().out
    assert "still training" in console and "failed" not in console


def test_overrides_with_brackets_are_shown_as_typed(sweep_dir, tmp_path, capsys, monkeypatch):
    """A run's overrides are text, not Rich markup: [stem.*] is kept, and [/x] (a closing
    tag to Rich) breaks nothing."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(job_dir(sweep_dir, 0), run)
    typed = ["finetune.freeze=[stem.*,stages.0.*]", "'finetune.freeze=[/x]'"]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in typed))
    monkeypatch.setenv("COLUMNS", "200")
    cli.main(["compare", str(run), str(job_dir(sweep_dir, 1)), f"output={tmp_path / 'c.png'}"])
    console = capsys.readouterr().out
    assert "finetune.freeze=[stem.*,stages.0.*]" in console and "[/x]" in console


def test_a_long_label_is_cut_short_in_the_legend():
    label = "#1 " + " ".join(f"key{i}=value{i}" for i in range(20))
    (axes,) = curves_figure([(label, [(1, 0.5)])], "val/acc per epoch", "val/acc").axes
    (text,) = [t.get_text() for t in axes.get_legend().get_texts()]
    assert len(text) == 60 and text.endswith("…") and label.startswith(text[:-1])


def test_curves_have_a_legend_labelled_axes_and_a_gap_at_a_nan():
    curves = [("optimizer=adam", [(1, 0.5), (2, math.nan), (3, 0.7)]), ("optimizer=sgd", [])]
    (axes,) = curves_figure(curves, "val/acc per epoch", "val/acc").axes
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [label for label, _ in curves]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("epoch", "val/acc")
    first = axes.get_lines()[0]
    assert math.isnan(first.get_ydata()[1])  # matplotlib leaves the segment out
    assert first.get_color() == COLOURS[0]
    assert all(float(t).is_integer() for t in axes.get_xticks())  # epochs, not 1.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "nowhere: no such directory"),
        (["{empty}"], "is not a run directory (it has no .hydra/) and holds no run directories"),
        (["{sweep}", "metrics=val/accc"], "no run has the metric val/accc; available: "),
        (["{sweep}", "output=curves.jpg"], "output=curves.jpg must end in .png"),
        (["{sweep}", "metric=val/acc"], "compare takes directories, metrics=A,B and output="),
        ([], "compare needs at least one run or sweep directory"),
    ],
)
def test_compare_mistakes_are_one_line(sweep_dir, tmp_path, capsys, args, message):
    args = [a.format(sweep=sweep_dir, empty=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", *args])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1


def test_damaged_run_files_are_read_with_care(tmp_path):
    """A line cut short by a killed run is left out; a summary that is not one marks the run."""
    from trainkit.compare import _curve
    from trainkit.sweeps import read_job

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    (run / "metrics.jsonl").write_text('{"epoch": 1, "val/acc": 0.5}\n[]\n{"epoch": 2, "val/a')
    assert _curve(run, "val/acc") == [(1, 0.5)]
    for damaged in ("[]", "{not json", '{"val/acc": 1}'):
        (run / "summary.json").write_text(damaged)
        job = read_job(run)
        assert (job.status, job.error) == ("failed", "summary.json is damaged")
    (run / "summary.json").write_bytes(b"\xff\xfe")
    assert read_job(run).status == "failed"


def test_runs_repeated_over_seeds_are_compared_as_groups_with_a_band(tmp_path, capsys):
    from tests.test_sweeps import fake_job

    sweep = tmp_path / "sweep"
    curves = {  # (optimizer, seed) -> val/acc per epoch
        ("sgd", 0): [0.5, 0.7], ("sgd", 1): [0.7, 0.9],
        ("adam", 0): [0.8, 0.9], ("adam", 1): [0.8, 0.95],
    }  # fmt: skip
    for number, ((optimizer, seed), values) in enumerate(curves.items()):
        name = str(number)
        summary = {"monitor": "val/acc", "val/acc": max(values), "test/acc": values[-1],
                   "best_epoch": 2, "train_time_s": 1.0}  # fmt: skip
        fake_job(sweep, name, [f"optimizer={optimizer}", f"trainer.seed={seed}"], summary)
        lines = [json.dumps({"epoch": e, "val/acc": v}) for e, v in enumerate(values, start=1)]
        (sweep / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    cli.main(["compare", str(sweep), f"output={tmp_path / 'c.png'}"])

    out = capsys.readouterr().out
    assert "2 configurations over trainer.seed" in out
    assert "0.9250 ± 0.0354 (2)" in out  # adam: the mean and std of 0.9 and 0.95
    assert Image.open(tmp_path / "c.png").size == (800, 450)


def test_a_band_is_the_mean_and_std_per_epoch():
    from trainkit.compare import _mean_and_std

    rows = _mean_and_std([[(1, 0.5), (2, 0.7)], [(1, 0.7), (2, math.nan)], [(1, 0.6)]])
    assert rows[0] == (1, pytest.approx(0.6), pytest.approx(0.1))
    assert rows[1] == (2, 0.7, 0.0)  # one finite value: no spread
