"""Sweeps: failed jobs that do not stop the sweep, and the summary of all jobs at its end.

``trainkit train -m ...`` runs one job per point of the grid (Hydra's basic sweeper) or per
Optuna trial (``hparams_search=random|tpe``). A job that fails writes ``failed.json`` into its
directory and the sweep goes on. When the sweep ends, ``SweepCallback`` (a Hydra callback
registered in conf/train.yaml) ranks the jobs by the monitored metric, prints them as a table
and writes ``sweep_summary.csv`` and ``sweep_summary.json`` into the sweep directory.

Nothing here imports torch at module level: Hydra imports this module for every run.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import importlib.util
import json
import logging
import math
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from trainkit.errors import UserError
from trainkit.overrides import command

log = logging.getLogger("trainkit")

FAILED_FILE = "failed.json"
INSTALL_HINT = "pip install 'trainkit[sweeps]'"

# The Hydra plugin each sweep option needs, all in the `sweeps` extra.
_PLUGINS = {
    "hparams_search": ("optuna", "Optuna"),
    "hydra/launcher=joblib": ("hydra_joblib_launcher", "the joblib launcher"),
    "hydra/launcher=submitit": ("hydra_submitit_launcher", "the submitit launcher"),
}


# --- job directories that say what the job was ---------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")
_LONG_NUMBER = re.compile(r"\d+\.\d{5,}(?:e[-+]?\d+)?")
_LONGEST_NAME = 80


def job_name(number: Any, overrides: str = "") -> str:
    """A job's directory name: its number, then what sets it apart from the sweep's other
    jobs (Hydra's override_dirname of its swept keys), safe in any file system and short:
    ``3_optimizer=adam,scheduler=step``. Numbers sort the jobs (``job_number``)."""
    # A sampled lr of 0.020001571940739166 reads as 0.02 (the value is in .hydra/).
    overrides = _LONG_NUMBER.sub(lambda m: f"{float(m.group()):.4g}", str(overrides))
    name = f"{number}_{_UNSAFE.sub('_', overrides)}" if overrides else str(number)
    if len(name) > _LONGEST_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: _LONGEST_NAME - 9]}~{digest}"
    return name


def job_number(directory: Path) -> int | None:
    """The number a job's directory name starts with (``3`` of ``3_optimizer=adam``)."""
    head = directory.name.split("_", 1)[0]
    return int(head) if head.isascii() and head.isdigit() else None


# conf/train.yaml names its sweep's job directories with it (hydra.sweep.subdir); Hydra
# resolves that in whichever process runs the job, and each one imports this module.
OmegaConf.register_new_resolver("trainkit_job_name", job_name, replace=True)


# --- before the sweep ----------------------------------------------------------------------


def check_overrides(overrides: list[str]) -> None:
    """Raise UserError for an unknown ``hparams_search`` option or a sweep plugin that is
    not installed, before Hydra answers with a traceback."""
    from trainkit.paths import config_dir

    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "hparams_search" and value not in ("", "null"):
            options = sorted(p.stem for p in (config_dir() / "hparams_search").glob("*.yaml"))
            if value not in options:
                hint = difflib.get_close_matches(value, options, n=1)
                did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
                raise UserError(
                    f"unknown hparams_search '{value}'; {did_you_mean}available: "
                    + ", ".join(options)
                )
            _require_plugin("hparams_search", override)
        elif key == "hydra/launcher":
            for prefix in ("joblib", "submitit"):
                if value.startswith(prefix):
                    _require_plugin(f"hydra/launcher={prefix}", override)


def _require_plugin(what: str, override: str) -> None:
    module, description = _PLUGINS[what]
    module = module if module == "optuna" else f"hydra_plugins.{module}"
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{override} needs {description}: {INSTALL_HINT}")


# --- in each job ---------------------------------------------------------------------------


def record_failure(run_dir: Path, error: BaseException) -> None:
    """Log one line and write ``failed.json`` (the error; for a crash, its traceback) into
    the job's directory, where the sweep summary finds it."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, UserError):
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    log.error(f"failed: {message}")  # after the job's [job N] prefix
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"status": "failed", "error": message}
    if not isinstance(error, UserError):  # a crash: the traceback is for whoever debugs it
        record["traceback"] = "".join(traceback.format_exception(error))
    (run_dir / FAILED_FILE).write_text(json.dumps(record, indent=2) + "\n")


# How a job of an Optuna search finds its trial: environment variables the sweeper sets in
# the job's process (hydra.job.env_set; DDP workers inherit them), not config keys, so the
# run's config is the same as outside a search.
TRIAL_VARIABLES = (
    "TRAINKIT_OPTUNA_STORAGE",
    "TRAINKIT_OPTUNA_STUDY",
    "TRAINKIT_OPTUNA_TRIAL",
    "TRAINKIT_OPTUNA_PRUNER",  # name,startup trials,warmup epochs: Optuna does not store it
)


def make_pruner(spec: str):
    """The pruner ``spec`` names (``median,5,2``: the median pruner after 5 finished trials
    and 2 epochs; ``hyperband,_,2``: at least 2 epochs; ``none``), as the sweeper and each
    trial's job both build it."""
    import optuna

    name, startup, warmup = (spec.split(",") + ["5", "2"])[:3]
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(startup), n_warmup_steps=int(warmup)
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, int(warmup)))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"hydra.sweeper.pruner={name}: use median, hyperband or none")


def trial_pruner():
    """In a job of an Optuna search: a function ``(epoch, monitored value) -> stop`` that
    reports the value to the job's trial and says whether the study's pruner stops it (the
    main process asks; under DDP every process gets its answer). None outside a search."""
    import os

    storage, study_name, trial_id, pruner = (os.environ.get(name) for name in TRIAL_VARIABLES)
    if not (storage and study_name and trial_id and trial_id.isdigit() and pruner):
        return None
    import optuna

    from trainkit import distributed

    trial = None
    if distributed.is_main_process():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(
            study_name=study_name, storage=storage, pruner=make_pruner(pruner)
        )
        if len(study.directions) == 1:  # Optuna prunes single-objective studies only
            trial = optuna.trial.Trial(study, int(trial_id))

    def prune(epoch: int, value: float) -> bool:
        stop = False
        if trial is not None and math.isfinite(value):
            trial.report(value, epoch)
            stop = trial.should_prune()
        return bool(distributed.broadcast_from_main(stop))

    return prune


def objective(summary: dict[str, Any]) -> float | None:
    """What a job gives the sweeper: its best monitored value, or None when that is not a
    finite number (a diverged run), which the Optuna sweeper records as a failed trial."""
    monitor = summary.get("monitor")
    value = summary.get(monitor)
    if _finite(value):
        return value
    log.warning(f"the monitored {monitor} is {value}: a sweep counts this run as failed")
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --- after the sweep -----------------------------------------------------------------------


@dataclass
class Job:
    """One job of a sweep, as its directory tells it."""

    dir: Path
    overrides: list[str]
    status: str  # "ok", "pruned" (stopped early by a search), "failed" or "training"
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def name(self) -> str:
        return self.dir.name


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The run directories (those with a ``.hydra/``) one or two levels below ``sweep_dir``
    (a sweep's jobs; a day's runs under outputs/), in job order."""
    found = [*sweep_dir.glob("*/.hydra"), *sweep_dir.glob("*/*/.hydra")]
    dirs = {path.parent for path in found if path.is_dir()}
    return sorted(
        dirs,
        key=lambda d: (0, job_number(d), str(d)) if job_number(d) is not None else (1, 0, str(d)),
    )


def read_job(run_dir: Path) -> Job:
    """A job's overrides, its summary.json and whether it failed (failed.json, no summary,
    a damaged summary, or a monitored value that is not a finite number). A file that cannot
    be read marks the job failed, saying which: a run's files are data, read with care."""
    overrides = _read(run_dir / ".hydra" / "overrides.yaml", list) or []
    failed = _read(run_dir / FAILED_FILE, dict)
    if failed is not None:
        return Job(run_dir, overrides, "failed", error=str(failed.get("error", "failed")))
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        from trainkit.rundir import is_held

        if is_held(run_dir):  # its process holds its lock: not failed, not done yet
            return Job(run_dir, overrides, "training", error="still training")
        return Job(run_dir, overrides, "failed", error="no summary.json: interrupted?")
    summary = _read(summary_file, dict)
    if summary is None or not isinstance(summary.get("monitor"), str):
        return Job(run_dir, overrides, "failed", error="summary.json is damaged")
    monitor = summary["monitor"]
    if not _finite(summary.get(monitor)):
        return Job(run_dir, overrides, "failed", summary, f"{monitor} is {summary.get(monitor)}")
    if summary.get("pruned_at_epoch"):  # an Optuna search stopped it: its numbers are early
        return Job(run_dir, overrides, "pruned", summary)
    return Job(run_dir, overrides, "ok", summary)


def _read(path: Path, kind: type) -> Any:
    """A run's JSON or YAML file as ``kind`` (dict or list), or None when it is missing or
    damaged."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        value = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return None
    if kind is list and isinstance(value, list):
        return [str(item) for item in value]
    return value if isinstance(value, kind) else None


def rank(jobs: list[Job], monitor: str, mode: str) -> list[Job]:
    """Finished jobs best first by ``monitor`` (``mode`` "max" or "min"), then those
    without that metric, then the pruned ones (by their value when stopped), then the failed
    ones and those still training, each group in job order."""

    def key(job: Job):
        value = job.summary.get(monitor)
        if job.status in ("failed", "training"):
            return (3, 0.0)
        if not _finite(value):
            return (1, 0.0)
        group = 2 if job.status == "pruned" else 0
        return (group, -value if mode == "max" else value)

    return sorted(jobs, key=key)  # sorted is stable: ties keep the job order


def _test_metrics(jobs: list[Job]) -> list[str]:
    """The scalar test metrics the jobs report (``test/acc``; not per class, ``test/f1/3``)."""
    names: dict[str, None] = {}
    for job in jobs:
        for key, value in job.summary.items():
            if key.startswith("test/") and key.count("/") == 1 and isinstance(value, (int, float)):
                names[key] = None
    return list(names)


# --- repeats: one configuration run with several seeds (or on several folds) ---------------

# Keys whose values repeat a configuration rather than change it: a sweep over them gives
# each configuration a mean and a spread instead of one number.
REPEAT_KEYS = ("trainer.seed", "data.fold")


def _key_of(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


# Top-level config nodes that change how a run is shown or continued, not what it trains.
_NOT_TRAINED = ("logger", "resume")


def configuration(job: Job) -> str:
    """What a job trains, but its seed and fold: what its repeats have in common. Read from
    the config it ran with (``.hydra/config.yaml``), so that overrides given in another
    order or spelled otherwise (``false``, ``False``) are one configuration; from its
    overrides where that file is missing or damaged."""
    config = _read(job.dir / ".hydra" / "config.yaml", dict)
    if config is not None:
        config = {key: value for key, value in config.items() if key not in _NOT_TRAINED}
        for key in REPEAT_KEYS:
            node, _, leaf = key.partition(".")
            if isinstance(config.get(node), dict):
                config[node] = {k: v for k, v in config[node].items() if k != leaf}
        return json.dumps(config, sort_keys=True, default=str)
    return json.dumps(sorted(_as_written(o) for o in _without_repeats(job.overrides)))


def _without_repeats(overrides: list[str]) -> list[str]:
    """``overrides`` without the seed and fold they repeat a configuration over."""
    return [o for o in overrides if _key_of(o) not in REPEAT_KEYS]


def _as_written(override: str) -> str:
    """``key=value`` with the value as YAML reads it (False and false alike)."""
    import yaml

    key, _, value = override.partition("=")
    try:
        return f"{key.lstrip('+~')}={json.dumps(yaml.safe_load(value), default=str)}"
    except yaml.YAMLError:
        return override


def spread(values: list[float]) -> tuple[float, float | None]:
    """The mean of ``values`` (at least one) and their sample standard deviation (None for
    one value)."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Group:
    """The jobs of one configuration, repeated over seeds or folds."""

    overrides: list[str]
    jobs: list[Job]

    def stats(self, metric: str) -> tuple[float | None, float | None, int]:
        """Mean, sample standard deviation (None for fewer than 2) and count of ``metric``
        over the finished jobs that have it."""
        values = [
            job.summary[metric]
            for job in self.jobs
            if job.status == "ok" and _finite(job.summary.get(metric))
        ]
        if not values:
            return None, None, 0
        return (*spread(values), len(values))

    @property
    def failed(self) -> int:
        return sum(job.status == "failed" for job in self.jobs)


def group_repeats(jobs: list[Job], monitor: str, mode: str) -> list[Group]:
    """The jobs grouped by configuration, ranked by the mean of ``monitor`` (groups without a
    finished job last); empty unless some configuration ran more than once (a sweep over
    ``trainer.seed`` or ``data.fold``)."""
    groups: dict[str, Group] = {}
    for job in sorted(jobs, key=lambda j: (job_number(j.dir) is None, job_number(j.dir) or 0)):
        key = configuration(job)
        groups.setdefault(key, Group(_without_repeats(job.overrides), [])).jobs.append(job)
    if all(len(group.jobs) < 2 for group in groups.values()):
        return []

    def key(group: Group):
        mean = group.stats(monitor)[0]
        if mean is None:
            return (1, 0.0)
        return (0, -mean if mode == "max" else mean)

    return sorted(groups.values(), key=key)


def pareto_front(jobs: list[Job], objectives: list[str]) -> list[Job]:
    """The finished jobs no other finished job beats on every objective at once (and on one
    strictly): losses and ``*_time_s`` lower, the rest higher."""
    from trainkit.tasks import lower_is_better

    signs = [-1 if lower_is_better(o) or o.endswith("time_s") else 1 for o in objectives]

    def scores(job: Job) -> list[float] | None:
        values = [job.summary.get(o) for o in objectives]
        if job.status != "ok" or not all(_finite(v) for v in values):
            return None
        return [sign * value for sign, value in zip(signs, values, strict=True)]

    scored = [(job, s) for job in jobs if (s := scores(job)) is not None]
    return [
        job
        for job, mine in scored
        if not any(
            all(o >= m for o, m in zip(other, mine, strict=True)) and other != mine
            for _, other in scored
        )
    ]


def summarize(
    sweep_dir: Path, monitor: str, mode: str, objectives: list[str] | None = None
) -> list[Job]:
    """Read every job of ``sweep_dir``, rank them, write sweep_summary.csv and .json there;
    returns the ranked jobs. A sweep that repeats configurations (over seeds or folds) also
    gets each configuration's mean, standard deviation and count, in the JSON's ``groups``
    and in the CSV's ``group`` columns (the group's rank and statistics on each of its jobs).
    With several ``objectives`` (a multi-objective search), the jobs on their Pareto front
    are listed in the JSON's ``pareto_front`` and marked in the CSV's ``pareto`` column."""
    jobs = rank([read_job(d) for d in job_dirs(sweep_dir)], monitor, mode)
    front = {job.dir for job in pareto_front(jobs, objectives)} if objectives else set()
    tests = _test_metrics(jobs)
    test_metric = monitor.replace("val/", "test/", 1)
    groups = group_repeats(jobs, monitor, mode)
    group_rows = [
        _group_row(position, group, monitor, test_metric, sweep_dir)
        for position, group in enumerate(groups, start=1)
    ]
    group_of = {
        job.dir: row for group, row in zip(groups, group_rows, strict=True) for job in group.jobs
    }
    rows = []
    for position, job in enumerate(jobs, start=1):
        row = {
            "rank": position if job.status == "ok" else None,
            "job": _job_label(job),
            "dir": str(job.dir.relative_to(sweep_dir)),
            "status": job.status,
            monitor: job.summary.get(monitor),
            "best_epoch": job.summary.get("best_epoch"),
            **{name: job.summary.get(name) for name in tests if name != monitor},
            "train_time_s": job.summary.get("train_time_s"),
            "pruned_at_epoch": job.summary.get("pruned_at_epoch"),
            "overrides": " ".join(job.overrides),
            "error": job.error,
        }
        if objectives:
            row["pareto"] = job.dir in front
            row.update({name: job.summary.get(name) for name in objectives if name not in row})
        if groups:
            group = group_of[job.dir]
            row.update(
                {f"group_{k}": v for k, v in group.items() if k not in ("overrides", "jobs")}
            )
        rows.append({key: _nan_to_none(value) for key, value in row.items()})
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["rank", "job"])
        writer.writeheader()
        writer.writerows(rows)
    for row, job in zip(rows, jobs, strict=True):
        row["overrides"] = job.overrides  # a list in the JSON
    document = {"sweep_dir": str(sweep_dir), "monitor": monitor, "mode": mode, "jobs": rows}
    if groups:
        document["groups"] = group_rows
    if objectives:
        document["objectives"] = objectives
        document["pareto_front"] = [_job_label(job) for job in jobs if job.dir in front]
    document["totals"] = totals(jobs)
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(document, indent=2) + "\n")
    return jobs


def totals(jobs: list[Job]) -> dict[str, Any]:
    """How the sweep's jobs ended, and the epochs and training time they took in all (a
    pruned job counts the epochs it trained)."""
    return {
        status: sum(job.status == status for job in jobs) for status in ("ok", "pruned", "failed")
    } | {
        "epochs": sum(int(job.summary.get("epochs") or 0) for job in jobs),
        "train_time_s": round(sum(float(job.summary.get("train_time_s") or 0) for job in jobs), 3),
    }


def _group_row(
    position: int, group: Group, monitor: str, test_metric: str, sweep_dir: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {"rank": position if group.stats(monitor)[0] is not None else None}
    for metric in dict.fromkeys([monitor, test_metric]):
        mean, std, count = group.stats(metric)
        row.update({f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_n": count})
    row["failed"] = group.failed
    row["overrides"] = group.overrides
    row["jobs"] = [_job_label(job) for job in group.jobs]
    return row


def _job_label(job: Job) -> str:
    """A job by its number (its directory name says more: 3_optimizer=adam)."""
    number = job_number(job.dir)
    return job.name if number is None else str(number)


def shared_overrides(jobs: list[Job]) -> set[str]:
    """The overrides every job has (none for a single job): said once, not on every row."""
    if len(jobs) < 2:
        return set()
    return set.intersection(*(set(job.overrides) for job in jobs))


def print_table(
    jobs: list[Job], monitor: str, mode: str, sweep_dir: Path, objectives: list[str] | None = None
) -> None:
    """The ranked jobs as a rich table; overrides shared by every job are said once above."""
    from rich.table import Table

    shared = shared_overrides(jobs)
    test_metric = monitor.replace("val/", "test/", 1)
    best = "highest" if mode == "max" else "lowest"
    table = Table(
        title=f"sweep: {len(jobs)} jobs ranked by {monitor} ({best} first)", title_justify="left"
    )
    table.add_column("rank", justify="right")
    table.add_column("job")
    table.add_column("status")
    metrics = [monitor] + ([test_metric] if test_metric != monitor else [])
    metrics += [name for name in objectives or [] if name not in metrics]  # the front's axes
    for name in metrics:
        table.add_column(name, justify="right")
    table.add_column("overrides", overflow="fold")
    any_failed = any(job.status == "failed" for job in jobs)
    if any_failed:
        table.add_column("why it failed")
    for position, job in enumerate(jobs, start=1):
        ok = job.status == "ok"
        status = {
            "ok": "ok",
            "pruned": f"pruned at epoch {job.summary.get('pruned_at_epoch')}",
            "failed": "[red]failed[/red]",
            "training": "training",
        }[job.status]
        cells = [str(position) if ok else "-", _job_label(job), status]
        cells += [cell(name, job.summary.get(name)) for name in metrics]
        cells.append(" ".join(o for o in job.overrides if o not in shared))
        if any_failed:
            cells.append(job.error)
        table.add_row(*cells)
    from trainkit.reporting import console as reporting_console

    console = reporting_console()
    if shared:
        console.print(f"every job: {' '.join(o for o in jobs[0].overrides if o in shared)}")
    console.print(table)
    done = totals(jobs)
    if done["pruned"]:
        console.print(
            f"{done['ok']} finished, {done['pruned']} pruned, {done['failed']} failed: "
            f"{done['epochs']} epochs, {done['train_time_s']:.1f}s of training in all"
        )
    if objectives:
        front = ", ".join(_job_label(job) for job in pareto_front(jobs, objectives))
        console.print(f"Pareto front of {', '.join(objectives)}: jobs {front or '(none)'}")
    groups = group_repeats(jobs, monitor, mode)
    if groups:
        console.print(groups_table(groups, monitor, shared))
    console.print(f"sweep summary: {sweep_dir / 'sweep_summary.csv'} (and .json)")
    console.print(f"compare jobs:  {command('tensorboard', '--logdir', str(sweep_dir))}")


def groups_table(groups: list[Group], monitor: str, shared: set[str] = frozenset()):
    """Repeated configurations as a rich table: mean ± standard deviation (and count) of
    the monitored metric and its test counterpart, best mean first."""
    from rich.table import Table

    test_metric = monitor.replace("val/", "test/", 1)
    repeated = sorted(
        {_key_of(o) for g in groups for j in g.jobs for o in j.overrides} & set(REPEAT_KEYS)
    )
    table = Table(
        title=f"{len(groups)} configuration{'s' if len(groups) != 1 else ''} over "
        f"{', '.join(repeated) or 'repeated runs'}: mean ± std (n)",
        title_justify="left",
    )
    table.add_column("rank", justify="right")
    for metric in dict.fromkeys([monitor, test_metric]):
        table.add_column(metric, justify="right")
    table.add_column("configuration", overflow="fold")
    table.add_column("jobs", overflow="fold")
    for position, group in enumerate(groups, start=1):
        ranked = group.stats(monitor)[0] is not None
        cells = [str(position) if ranked else "-"]
        for metric in dict.fromkeys([monitor, test_metric]):
            cells.append(mean_and_std(*group.stats(metric)))
        cells.append(" ".join(o for o in group.overrides if o not in shared) or "(the same)")
        failed = f" ({group.failed} failed)" if group.failed else ""
        cells.append(",".join(_job_label(job) for job in group.jobs) + failed)
        table.add_row(*cells)
    return table


def mean_and_std(mean: float | None, std: float | None, count: int) -> str:
    """``0.9712 ± 0.0031 (3)``; ``-`` with no value."""
    if mean is None:
        return "-"
    spread = f" ± {std:.4f}" if std is not None else ""
    return f"{mean:.4f}{spread} ({count})"


def fail_if_jobs_failed(sweep_dir: Path, earlier: set[Path]) -> None:
    """End a sweep whose jobs did not all succeed with one line on stderr and exit status 1
    (a mistake in the command itself is status 2): how many failed and where to read why.
    ``earlier``: job directories that were there before (a continued study's), not counted."""
    import sys

    jobs = [read_job(d) for d in job_dirs(sweep_dir) if d not in earlier]
    failed = [job for job in jobs if job.status == "failed"]
    if not failed:
        return
    files = [
        str(job.dir / FAILED_FILE) if (job.dir / FAILED_FILE).is_file() else str(job.dir)
        for job in failed
    ]
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    print(
        f"trainkit: error: {len(failed)} of {len(jobs)} jobs failed; why: {shown}",
        file=sys.stderr,
    )
    sys.exit(1)


def _nan_to_none(value: Any) -> Any:
    """NaN and infinities as empty CSV cells and JSON nulls (JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def cell(metric: str, value: Any) -> str:
    """A summary's value in a table: ``-`` for none, seconds to a tenth (``22.0``),
    other numbers to four places (``0.9712``)."""
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    return f"{value:.1f}" if metric.endswith("time_s") else f"{value:.4f}"


class SweepCallback(Callback):
    """Hydra callback (conf/train.yaml): each job has trainkit's components, and when a sweep
    ends, the table and files of ``summarize``."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A launcher may run the job in a process of its own (joblib, submitit), where the
        # registries are empty: `trainkit train` filled them only in the first process.
        from trainkit.registry import load_components

        load_components(config.get("plugins") or [])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return  # nothing ran (an empty sweep)
        from trainkit.build import monitored_metric

        monitor, mode = monitored_metric(config)
        objectives = config.hydra.sweeper.get("objectives") or []
        objectives = [objectives] if isinstance(objectives, str) else list(objectives)
        jobs = summarize(sweep_dir, monitor, mode, objectives)
        print_table(jobs, monitor, mode, sweep_dir, objectives)
