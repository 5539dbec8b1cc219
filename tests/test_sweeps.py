"""Sweeps: a failed job does not stop the sweep, the summary ranks the jobs, Optuna searches
keep their study in the sweep directory and continue it, the launchers compose."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_trainkit
from tests.test_cli_train import hparams_of
from trainkit import cli, sweeps
from trainkit.errors import UserError
from trainkit.paths import config_dir

TINY = [
    "data=synthetic",
    "data.num_samples=120",
    "model=mlp",
    "model.hidden=[16]",
    "trainer.max_epochs=2",
    "logger.progress_bar=false",
]


def job_dir(sweep_dir: Path, number: int) -> Path:
    """The directory of job ``number`` (named 3_optimizer=adam: its number, what it varied)."""
    (found,) = [d for d in sweeps.job_dirs(sweep_dir) if sweeps.job_number(d) == number]
    return found


def only_sweep_dir(cwd: Path) -> Path:
    (sweep_dir,) = (cwd / "outputs" / "multirun").glob("*/*")
    return sweep_dir


TOO_FEW = "data: cannot split 20 samples of 10 classes"


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """Three jobs; the middle one has too few samples to split, which only reading its data
    finds (a mistake in a job's config stops the sweep before it starts)."""
    cwd = tmp_path_factory.mktemp("grid_sweep")
    tiny = [o for o in TINY if not o.startswith("data.num_samples=")]
    result = run_trainkit("train", "-m", "data.num_samples=120,20,150", *tiny, cwd=cwd)
    assert result.returncode == 1, result.stdout + result.stderr  # a job failed: status 1
    return only_sweep_dir(cwd), result


# --- grid sweep with a failing job ---------------------------------------------------------


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(grid_sweep):
    sweep_dir, result = grid_sweep
    names = [p.name for p in sweeps.job_dirs(sweep_dir)]
    assert names == [f"{n}_data.num_samples={s}" for n, s in enumerate((120, 20, 150))]
    failed = json.loads((job_dir(sweep_dir, 1) / "failed.json").read_text())
    assert failed["error"].startswith(TOO_FEW)
    assert "traceback" not in failed  # a user's mistake needs none
    assert f"[job 1] failed: {TOO_FEW}" in result.stdout + result.stderr
    for job in (0, 2):
        assert (job_dir(sweep_dir, job) / "summary.json").is_file()
    # The sweep ends saying so: how many failed, where to read why (CI sees the status).
    assert result.stderr.strip().splitlines()[-1] == (
        f"trainkit: error: 1 of 3 jobs failed; why: {job_dir(sweep_dir, 1) / 'failed.json'}"
    )


def test_the_summary_ranks_the_jobs_by_the_monitored_metric(grid_sweep):
    sweep_dir, result = grid_sweep
    values = {
        str(job): json.loads((job_dir(sweep_dir, job) / "summary.json").read_text())["val/acc"]
        for job in (0, 2)
    }
    best, worst = sorted(values, key=values.get, reverse=True)
    with open(sweep_dir / "sweep_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["rank"], r["job"], r["status"]) for r in rows] == [
        ("1", best, "ok"),
        ("2", worst, "ok"),
        ("", "1", "failed"),
    ]
    assert float(rows[0]["val/acc"]) == pytest.approx(values[best])
    assert rows[2]["error"].startswith(TOO_FEW)
    overrides = rows[2]["overrides"]
    assert "data.num_samples=20" in overrides and "data=synthetic" in overrides
    assert {"best_epoch", "test/acc", "test/loss", "train_time_s"} <= set(rows[0])

    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert (summary["monitor"], summary["mode"]) == ("val/acc", "max")
    assert [job["job"] for job in summary["jobs"]] == [best, worst, "1"]
    assert "data.num_samples=20" in summary["jobs"][2]["overrides"]  # a list in the JSON
    assert summary["jobs"][2]["val/acc"] is None

    console = result.stdout.replace("\n", " ")
    assert "3 jobs ranked by val/acc (highest first)" in console
    assert "failed" in console and "sweep_summary.csv" in console


def test_every_job_of_a_sweep_has_its_hparams_in_its_own_event_file(grid_sweep):
    """`tensorboard --logdir SWEEP_DIR` shows one HParams row per job that trained."""
    sweep_dir, _ = grid_sweep
    event_files = sorted(sweep_dir.glob("*/events.out.tfevents.*"))
    assert [f.parent for f in event_files] == [job_dir(sweep_dir, 0), job_dir(sweep_dir, 2)]
    for event_file, samples in zip(event_files, (120, 150), strict=True):
        events = EventAccumulator(str(event_file))
        events.Reload()
        columns, values = hparams_of(events)
        # What the sweep varies first, then the fixed few: five, all shown unasked.
        assert values == {
            "data.num_samples": str(samples),
            "model": "mlp",
            "optimizer": "sgd",
            "optimizer.lr": 0.1,
            "data.batch_size": "64",
        }
        assert columns == ["val/acc_best", "test/acc", "train/time_s"]


# --- ranking, files and failure records, without training ----------------------------------


def fake_job(
    sweep_dir: Path, name: str, overrides: list[str], summary=None, failed=None, config=None
):
    job = sweep_dir / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if config is not None:
        (job / ".hydra" / "config.yaml").write_text(json.dumps(config))  # (JSON is YAML)
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    if failed is not None:
        (job / "failed.json").write_text(json.dumps({"status": "failed", "error": failed}))


@pytest.mark.parametrize(("mode", "order"), [("min", ["2", "0", "4"]), ("max", ["4", "0", "2"])])
def test_ranking_follows_the_direction_and_failed_jobs_come_last(tmp_path, mode, order):
    for name, value in (("0", 0.5), ("2", 0.25), ("4", 0.75)):
        fake_job(tmp_path, name, [f"x={name}"], {"monitor": "val/rmse", "val/rmse": value})
    fake_job(tmp_path, "1", ["x=1"], failed="boom")
    fake_job(tmp_path, "3", ["x=3"], {"monitor": "val/rmse", "val/rmse": math.nan})
    fake_job(tmp_path, "5", ["x=5"])  # interrupted: neither summary nor failure

    jobs = sweeps.summarize(tmp_path, "val/rmse", mode)

    assert [job.name for job in jobs] == [*order, "1", "3", "5"]
    assert [job.error for job in jobs[3:]] == [
        "boom",
        "val/rmse is nan",
        "no summary.json: interrupted?",
    ]
    with open(tmp_path / "sweep_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "", "", ""]
    assert [r["overrides"] for r in rows[:3]] == [f"x={name}" for name in order]
    assert rows[4]["val/rmse"] == ""  # NaN is left empty, in the JSON null
    document = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert document["jobs"][4]["val/rmse"] is None and document["mode"] == mode


def test_repeats_over_seeds_are_grouped_with_mean_std_and_count(tmp_path, capsys):
    values = {  # (optimizer, seed) -> val/acc; adam's mean is higher
        ("adam", 0): 0.90, ("adam", 1): 0.94, ("adam", 2): 0.92,
        ("sgd", 0): 0.95, ("sgd", 1): 0.85, ("sgd", 2): None,  # a failed job
    }  # fmt: skip
    for number, ((optimizer, seed), value) in enumerate(values.items()):
        overrides = [f"optimizer={optimizer}", f"trainer.seed={seed}"]
        summary = {"monitor": "val/acc", "val/acc": value, "test/acc": value and value - 0.01}
        if value is None:
            fake_job(tmp_path, str(number), overrides, failed="diverged")
        else:
            fake_job(tmp_path, str(number), overrides, summary)

    jobs = sweeps.summarize(tmp_path, "val/acc", "max")
    groups = sweeps.group_repeats(jobs, "val/acc", "max")

    assert [g.overrides for g in groups] == [["optimizer=adam"], ["optimizer=sgd"]]
    mean, std, count = groups[0].stats("val/acc")
    assert (mean, std, count) == (pytest.approx(0.92), pytest.approx(0.02), 3)
    assert groups[1].stats("val/acc") == (pytest.approx(0.90), pytest.approx(0.0707107), 2)
    assert groups[1].failed == 1
    document = json.loads((tmp_path / "sweep_summary.json").read_text())
    first = document["groups"][0]
    assert first["val/acc_mean"] == pytest.approx(0.92) and first["val/acc_n"] == 3
    assert first["test/acc_std"] == pytest.approx(0.02) and first["jobs"] == ["0", "1", "2"]
    with open(tmp_path / "sweep_summary.csv") as handle:
        rows = {row["job"]: row for row in csv.DictReader(handle)}
    assert rows["4"]["group_rank"] == "2" and rows["5"]["group_failed"] == "1"
    assert float(rows["0"]["group_val/acc_std"]) == pytest.approx(0.02)

    sweeps.print_table(jobs, "val/acc", "max", tmp_path)
    out = capsys.readouterr().out
    assert "over trainer.seed" in out and "0.9200 ± 0.0200 (3)" in out


def test_repeats_are_grouped_by_what_they_train_not_how_their_overrides_are_written(
    tmp_path, capsys
):
    """The same configuration given in another order, with a bool spelled False (as Hydra
    writes a sweep job's) or false, or shown otherwise (logger.*), is one configuration."""
    acc = {"0": 0.2, "1": 0.4, "2": 0.6, "3": 0.9}
    runs = {
        "0": ["optimizer=adam", "scheduler=step", "logger.progress_bar=False"],
        "1": ["scheduler=step", "optimizer=adam", "logger.progress_bar=false"],
        "2": ["optimizer=adam", "scheduler=step"],
        "3": ["optimizer=sgd", "scheduler=step"],
    }
    for seed, (name, overrides) in enumerate(runs.items()):
        optimizer = overrides[0].partition("=")[2] if name != "1" else "adam"
        config = {
            "optimizer": {"name": optimizer},
            "trainer": {"seed": seed, "max_epochs": 2},
            "logger": {"progress_bar": name == "2"},
        }
        summary = {"monitor": "val/acc", "val/acc": acc[name]}
        fake_job(tmp_path, name, [*overrides, f"trainer.seed={seed}"], summary, config=config)
    fake_job(
        tmp_path,
        "4",
        ["trainer.seed=4", "optimizer=sgd", "scheduler=step"],
        {"monitor": "val/acc", "val/acc": 0.7},
    )  # fmt: skip  (no config.yaml: overrides)
    fake_job(tmp_path, "5", ["scheduler=step", "optimizer=sgd", "trainer.seed=5"],
             {"monitor": "val/acc", "val/acc": 0.5})  # fmt: skip

    jobs = sweeps.summarize(tmp_path, "val/acc", "max")
    groups = sweeps.group_repeats(jobs, "val/acc", "max")

    assert [[job.name for job in group.jobs] for group in groups] == [
        ["3"],
        ["4", "5"],
        ["0", "1", "2"],
    ]
    assert groups[2].stats("val/acc") == (pytest.approx(0.4), pytest.approx(0.2), 3)


def test_identical_runs_without_a_seed_are_grouped_as_repeated_runs(tmp_path, capsys):
    for number in range(2):
        fake_job(
            tmp_path, str(number), ["optimizer.lr=0.1"], {"monitor": "val/acc", "val/acc": 0.5}
        )
    jobs = sweeps.summarize(tmp_path, "val/acc", "max")
    sweeps.print_table(jobs, "val/acc", "max", tmp_path)
    assert "1 configuration over repeated runs: mean ± std (n)" in capsys.readouterr().out


def test_a_sweep_without_repeats_has_no_groups(tmp_path):
    for number, optimizer in enumerate(["adam", "sgd"]):
        fake_job(
            tmp_path,
            str(number),
            [f"optimizer={optimizer}"],
            {"monitor": "val/acc", "val/acc": 0.9},
        )
    jobs = sweeps.summarize(tmp_path, "val/acc", "max")
    assert sweeps.group_repeats(jobs, "val/acc", "max") == []
    assert "groups" not in json.loads((tmp_path / "sweep_summary.json").read_text())


def test_a_crash_in_a_job_keeps_its_traceback(tmp_path):
    try:
        raise RuntimeError("loss is nan at step 12")
    except RuntimeError as error:
        sweeps.record_failure(tmp_path, error)
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert failed["error"] == "RuntimeError: loss is nan at step 12"
    assert "Traceback" in failed["traceback"] and "test_sweeps.py" in failed["traceback"]


def test_a_diverged_run_gives_the_sweeper_no_value():
    assert sweeps.objective({"monitor": "val/loss", "val/loss": 0.5}) == 0.5
    assert sweeps.objective({"monitor": "val/loss", "val/loss": math.nan}) is None
    assert sweeps.objective({"monitor": "val/loss", "val/loss": math.inf}) is None


# --- Optuna --------------------------------------------------------------------------------


def load_study(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="trainkit", storage=f"sqlite:///{sweep_dir}/optuna.db")


# tpe without -m: hparams_search= makes the command a sweep by itself.
@pytest.mark.parametrize(("search", "flags"), [("random", ["-m"]), ("tpe", [])])
def test_optuna_search_runs_its_trials_and_keeps_the_study_in_the_sweep_dir(
    tmp_path, search, flags
):
    result = run_trainkit(
        "train",
        *flags,
        f"hparams_search={search}",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.seed=0",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_dir = only_sweep_dir(tmp_path)
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["multirun"]  # no run dir
    jobs = list(sweep_dir.glob("[01]_*"))  # named by what varies, not what all share
    assert len(jobs) == 2 and not [p for p in jobs if "hparams_search" in p.name]
    study = load_study(sweep_dir)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # val/acc
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert sorted(job["job"] for job in summary["jobs"]) == ["0", "1"]
    # Each job ran with its trial's parameters, and reports the value the trial got.
    for trial in study.trials:
        job = next(j for j in summary["jobs"] if j["job"] == str(trial.number))
        assert f"optimizer.lr={trial.params['optimizer.lr']}" in job["overrides"]
        assert job["val/acc"] == pytest.approx(trial.value)


@pytest.mark.slow
def test_a_nan_trial_fails_and_a_rerun_continues_the_study(tmp_path):
    """An lr of 1e30 makes the loss NaN: a failed trial, not a crash of the sweep. Rerun
    with the same sweep dir and more trials, the study goes on to n_trials with job 2 beside
    jobs 0 and 1."""
    sweep = [
        "train", "-m", "hparams_search=random", "hydra.sweeper.seed=2",  # 1e30, then 0.05
        "optimizer.lr=choice(1e30,0.05)", "hydra.sweep.dir=sweep", "trainer.monitor=val/loss",
        *TINY,
    ]  # fmt: skip
    first = run_trainkit(*sweep, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr  # its 1e30 trial failed
    sweep_dir = tmp_path / "sweep"
    study = load_study(sweep_dir)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # val/loss
    states = {t.params["optimizer.lr"]: t.state for t in study.trials}
    assert states == {1e30: optuna.trial.TrialState.FAIL, 0.05: optuna.trial.TrialState.COMPLETE}
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())["jobs"]
    (failed,) = [job for job in jobs if job["status"] == "failed"]
    assert "nan" in failed["error"]  # the runner's divergence error, or a NaN val/loss
    overrides = (sweep_dir / failed["dir"] / ".hydra" / "overrides.yaml").read_text()
    assert "optimizer.lr=1e+30" in overrides

    run_trainkit(*sweep, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert len(load_study(sweep_dir).trials) == 3
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())["jobs"]
    assert sorted(job["job"] for job in jobs) == ["0", "1", "2"]


# --- composing the sweeper and the launchers -----------------------------------------------


def compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("search", ["random", "tpe", "grid"])
def test_hparams_search_composes_and_adds_no_config_key(search):
    from trainkit import config

    cfg = compose_with_hydra([f"hparams_search={search}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.trainkit_optuna_sweeper.TrainkitOptunaSweeper"
    assert sweeper.sampler == search and sweeper.pruner == "median"
    assert sweeper.storage == f"sqlite:///{cfg.hydra.sweep.dir}/optuna.db"
    searched = {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    assert set(sweeper.params) == ({"optimizer", "scheduler"} if search == "grid" else searched)
    # The run's own config (what `trainkit train` checks before Hydra) is unchanged.
    config.validate(config.compose(config.prepare([f"hparams_search={search}"])))


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ],
)
def test_launchers_compose(launcher, target):
    cfg = compose_with_hydra([f"hydra/launcher={launcher}", "optimizer=adam"])
    assert cfg.hydra.launcher._target_ == target


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_processes(tmp_path):
    result = run_trainkit(
        "train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optimizer=sgd,adam",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = json.loads((only_sweep_dir(tmp_path) / "sweep_summary.json").read_text())["jobs"]
    assert sorted(j["status"] for j in jobs) == ["ok", "ok"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs SLURM (sbatch)")
def test_submitit_runs_jobs_on_slurm(tmp_path):
    result = run_trainkit(
        "train", "-m", "hydra/launcher=submitit_slurm", "optimizer=sgd,adam", *TINY, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = json.loads((only_sweep_dir(tmp_path) / "sweep_summary.json").read_text())["jobs"]
    assert sorted(j["status"] for j in jobs) == ["ok", "ok"]


# --- mistakes ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("srun") is not None, reason="SLURM is here: the launcher works")
def test_the_slurm_launcher_without_slurm_is_one_line_and_leaves_nothing(tmp_path):
    result = run_trainkit(
        "train", "-m", "hydra/launcher=submitit_slurm", "optimizer=sgd,adam", *TINY, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "trainkit: error: the sweep's launcher or sweeper failed before its jobs ran: "
        'RuntimeError: Could not detect "srun"'
    )
    assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_missing_sweep_plugin_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setattr(sweeps.importlib.util, "find_spec", lambda name: None)
    for override, needs in [
        ("hparams_search=tpe", "Optuna"),
        ("hydra/launcher=joblib", "the joblib launcher"),
        ("hydra/launcher=submitit_slurm", "the submitit launcher"),
    ]:
        with pytest.raises(UserError) as error:
            sweeps.check_overrides([override])
        assert str(error.value) == f"{override} needs {needs}: pip install 'trainkit[sweeps]'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "hparams_search=tpee"], "unknown hparams_search 'tpee'; did you mean 'tpe'?"),
        (["hparams_search=tpe", "optimizer.lrr=1"], "unknown key optimizer.lrr"),
    ],
)
def test_sweep_mistakes_are_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", *args])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("number", "overrides", "name"),
    [
        (3, "optimizer=adam,scheduler=step", "3_optimizer=adam,scheduler=step"),
        (0, "", "0"),
        (1, "optimizer.lr=0.020001571940739166", "1_optimizer.lr=0.02"),  # a sampled value
        (2, "data.root=/data/my images", "2_data.root=_data_my_images"),  # safe in any FS
    ],
)
def test_a_job_directory_says_what_the_job_was(number, overrides, name):
    assert sweeps.job_name(number, overrides) == name
    assert sweeps.job_number(Path(name)) == number


def test_a_long_job_name_is_cut_and_stays_unique():
    names = {sweeps.job_name(7, f"model.hidden=[{'64,' * 40}{i}]") for i in range(3)}
    assert len(names) == 3 and all(len(n) <= 80 and n.startswith("7_") for n in names)


# --- pruning, grids, several objectives ----------------------------------------------------

SHORT = [o for o in TINY if not o.startswith("trainer.max_epochs=")]
PRUNABLE = [
    "-m", "hparams_search=random", "hydra.sweeper.n_trials=8",
    "hydra.sweeper.seed=1", "hydra.sweeper.pruner_startup_trials=2",
    "hydra.sweeper.pruner_warmup_epochs=1", "optimizer.lr=tag(log, interval(1e-5, 0.3))",
    "optimizer.weight_decay=0", "data.batch_size=64", "trainer.monitor=val/loss", *SHORT,
    "trainer.max_epochs=6",
]  # fmt: skip


@pytest.mark.slow
def test_without_a_pruner_every_trial_trains_to_the_end(tmp_path):
    # The settings under which the median pruner stops trials (below); each job builds the
    # sweeper's pruner too, not Optuna's default one.
    result = run_trainkit("train", *PRUNABLE, "hydra.sweeper.pruner=none", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    states = {t.state for t in load_study(only_sweep_dir(tmp_path)).trials}
    assert states == {optuna.trial.TrialState.COMPLETE}


@pytest.mark.slow
def test_a_search_prunes_hopeless_trials_and_records_them_as_pruned(tmp_path):
    # Random lrs from 1e-5 (hopeless in 6 epochs) to 0.3; the median pruner may stop a trial
    # from its first epoch on, once two trials finished. Ranked by val/loss: accuracy on 18
    # samples ties too often for "worse than the median" to happen.
    result = run_trainkit("train", *PRUNABLE, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr  # pruned is not failed
    sweep_dir = only_sweep_dir(tmp_path)
    states = {t.number: t.state for t in load_study(sweep_dir).trials}
    pruned = [n for n, state in states.items() if state == optuna.trial.TrialState.PRUNED]
    assert pruned, states
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    jobs = {job["job"]: job for job in summary["jobs"]}
    for number in pruned:
        job = jobs[str(number)]
        assert job["status"] == "pruned" and 1 <= job["pruned_at_epoch"] < 6
        run = sweep_dir / job["dir"]  # its checkpoints and metrics up to where it stopped
        epochs = (run / "metrics.jsonl").read_text().splitlines()
        assert len(epochs) == job["pruned_at_epoch"] and (run / "checkpoints" / "best.pt").exists()
    assert summary["totals"]["pruned"] == len(pruned) and summary["totals"]["failed"] == 0
    assert summary["totals"]["epochs"] < 8 * 6
    assert "pruned at epoch" in result.stdout


@pytest.mark.slow
def test_a_grid_search_runs_every_point_once_and_continues(tmp_path):
    grid = ["-m", "hparams_search=grid", "optimizer=choice(sgd,adam)", "scheduler=constant",
            "hydra.sweep.dir=grid", *SHORT, "trainer.max_epochs=1"]  # fmt: skip
    result = run_trainkit("train", *grid, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    study = load_study(tmp_path / "grid")
    assert sorted(t.params["optimizer"] for t in study.trials) == ["adam", "sgd"]
    again = run_trainkit("train", *grid, cwd=tmp_path)  # nothing is missing: no new trial
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(load_study(tmp_path / "grid").trials) == 2


def test_the_pareto_front_keeps_the_jobs_nothing_beats_on_both(tmp_path):
    points = {"0": (0.9, 10.0), "1": (0.95, 20.0), "2": (0.85, 15.0), "3": (0.95, 25.0)}
    for name, (acc, seconds) in points.items():
        summary = {"monitor": "val/acc", "val/acc": acc, "train_time_s": seconds}
        fake_job(tmp_path, name, [f"x={name}"], summary)
    objectives = ["val/acc", "train_time_s"]
    jobs = sweeps.summarize(tmp_path, "val/acc", "max", objectives)
    assert sorted(job.name for job in sweeps.pareto_front(jobs, objectives)) == ["0", "1"]
    document = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert sorted(document["pareto_front"]) == ["0", "1"]
    assert {row["job"]: row["pareto"] for row in document["jobs"]}["2"] is False


def test_the_table_shows_every_objective_so_the_front_can_be_checked(tmp_path, capsys):
    for name, (acc, seconds) in {"0": (0.9, 10.0), "1": (0.95, 20.0)}.items():
        summary = {"monitor": "val/acc", "val/acc": acc, "train_time_s": seconds}
        fake_job(tmp_path, name, [f"x={name}"], summary)
    objectives = ["val/acc", "train_time_s"]
    jobs = sweeps.summarize(tmp_path, "val/acc", "max", objectives)
    sweeps.print_table(jobs, "val/acc", "max", tmp_path, objectives)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "status" in line)
    assert "train_time_s" in header and " 20.0 " in out and " 10.0 " in out


def test_the_sweeps_extra_pins_no_optuna_below_its_current_releases():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for requirement in extras["sweeps"]:
        assert "<" not in requirement, requirement  # an environment's Optuna stays as it is
    assert not any("hydra-optuna-sweeper" in r for r in extras["sweeps"])


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("median,3,2", "MedianPruner"),
        ("hyperband,5,2", "HyperbandPruner"),
        ("none,5,2", "NopPruner"),
    ],
)
def test_the_pruner_named_is_built_alike_in_the_sweeper_and_the_jobs(spec, kind):
    pruner = sweeps.make_pruner(spec)
    assert type(pruner).__name__ == kind
    if kind == "MedianPruner":
        assert (pruner._n_startup_trials, pruner._n_warmup_steps) == (3, 2)


@pytest.mark.parametrize(
    "search",
    [
        "optimizer.lr=tag(log, interval(1e-4, 1e-1))",
        "optimizer.lr=interval(0.01, 0.5)",
        "data.batch_size=int(interval(8, 64))",
        "data.batch_size=tag(log, int(interval(8, 64)))",
        "data.batch_size=int(tag(log, interval(8, 64)))",
    ],
)
def test_a_search_whose_intervals_fit_their_keys_is_accepted(search):
    from trainkit import config

    overrides = config.prepare(["hparams_search=tpe", *TINY, search])
    config.check_sweep(overrides, [])


@pytest.mark.parametrize(
    ("search", "message"),
    [
        # Both ends are values the trials may get (Optuna samples an interval's ends too).
        (
            "optimizer.lr=interval(-1,-0.5)",
            "optimizer.lr=-1.0 (of optimizer.lr=interval(-1,-0.5)): optimizer.lr=-1.0 is out "
            "of range: it must be > 0",
        ),
        (
            "model.dropout=interval(0.1,1)",
            "model.dropout=1.0 (of model.dropout=interval(0.1,1)): model.dropout=1.0 is out of "
            "range: it must be >= 0 and < 1",
        ),
        (
            "data.batch_size=int(interval(0,64))",
            "data.batch_size=0 (of data.batch_size=int(interval(0,64))): data.batch_size=0 is "
            "out of range: it must be >= 1",
        ),
        # Floats for a key that takes whole numbers: the int(...) that samples them.
        (
            "data.batch_size=tag(log, interval(1,64))",
            "data.batch_size=tag(log, interval(1,64)): data.batch_size takes whole numbers and "
            "an interval samples floats; write 'data.batch_size=int(tag(log, interval(1,64)))'",
        ),
        (
            "data.batch_size=interval(0,64)",  # 0 is out of range too: that comes next
            "data.batch_size=interval(0,64): data.batch_size takes whole numbers and an "
            "interval samples floats; write 'data.batch_size=int(interval(0,64))'",
        ),
        # A key that is not there: the message a plain override gets, the search in its fix.
        (
            "optimizer.lrr=interval(1e-3,1)",
            "unknown key optimizer.lrr; did you mean 'lr'? allowed keys: name, lr, momentum,",
        ),
        (
            "optimzer.lr=interval(1e-3,1)",
            "unknown key optimzer.lr: the config has no optimzer; did you mean "
            "optimizer.lr=interval(1e-3,1)?",
        ),
        (
            "optimizer.lrr=choice(0.1,0.2)",
            "unknown key optimizer.lrr; did you mean 'lr'? allowed keys: name, lr, momentum,",
        ),
    ],
)
def test_a_search_is_checked_at_both_ends_of_its_intervals(search, message):
    from trainkit import config

    overrides = config.prepare(["hparams_search=tpe", *TINY, search])
    with pytest.raises(UserError) as error:
        config.check_sweep(overrides, [])
    assert str(error.value).startswith(message)


def test_an_int_interval_is_searched_as_whole_numbers():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import IntDistribution

    from hydra_plugins.trainkit_optuna_sweeper import _distribution

    (override,) = OverridesParser.create().parse_overrides(
        ["data.batch_size=int(tag(log, interval(8, 64)))"]
    )
    distribution = _distribution("data.batch_size", override)
    assert distribution == IntDistribution(8, 64, log=True)


def test_a_grid_takes_ranges_as_lists_of_values():
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from hydra_plugins.trainkit_optuna_sweeper import _grid_of

    space = {"a": IntDistribution(16, 48, step=16), "b": CategoricalDistribution(["x", "y"])}
    assert _grid_of(space) == {"a": [16, 32, 48], "b": ["x", "y"]}


def test_a_trial_left_running_by_a_stopped_sweep_fails_when_the_study_continues(tmp_path):
    space = {"optimizer.lr": optuna.distributions.CategoricalDistribution([0.01, 0.1])}
    (tmp_path / "sweep").mkdir()
    study = optuna.create_study(
        study_name="trainkit", storage=f"sqlite:///{tmp_path}/sweep/optuna.db", direction="maximize"
    )
    study.ask(space)  # trial 0: its sweep was killed before it was told anything
    result = run_trainkit(
        "train", "-m", "hparams_search=random", "optimizer.lr=choice(0.01,0.1)",
        "optimizer.weight_decay=0", "data.batch_size=32", "hydra.sweeper.n_trials=2",
        "hydra.sweep.dir=sweep", *TINY, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    states = [t.state for t in load_study(tmp_path / "sweep").trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert "trial 0 was interrupted: counted as failed" in result.stdout + result.stderr
    # The launcher's line for the job lists the user's overrides, not trainkit's own.
    (line,) = [line for line in result.stdout.splitlines() if "\t#1 : " in line]
    assert "optimizer.lr=" in line and "TRAINKIT_OPTUNA" not in result.stdout + result.stderr
