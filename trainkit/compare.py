"""``trainkit compare``: runs side by side, as a table of their metrics and a PNG of their
validation curves (drawn by trainkit/plotting.py).

A run directory is one with a ``.hydra/`` in it; any other directory (a sweep's, or a day's
under outputs/) stands for the run directories below it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.markup import escape

from trainkit.errors import UserError
from trainkit.plotting import band_figure, curves_figure, png_bytes
from trainkit.rundir import write_new_file
from trainkit.sweeps import (
    Job,
    cell,
    group_repeats,
    groups_table,
    job_dirs,
    read_job,
    shared_overrides,
    spread,
)


def compare(paths: list[Path], metrics: list[str], output: Path | None) -> None:
    """Print a table of ``metrics`` (default: the monitored metric, its test counterpart,
    best_epoch, train_time_s) for every run under ``paths`` and write their curves of the
    monitored metric to ``output`` (None: compare.png, or the next free name). Raises
    UserError for a path that holds no run or a metric that no run has."""

    runs = [read_job(run_dir) for run_dir in expand(paths)]
    finished = [run for run in runs if run.summary]
    if not finished:
        raise UserError("none of these runs has a summary.json: none finished")
    monitor = finished[0].summary["monitor"]
    metrics = metrics or default_metrics(finished, monitor)
    known = sorted({key for run in finished for key in run.summary if _is_scalar_metric(run, key)})
    for metric in metrics:
        if metric not in known:
            raise UserError(f"no run has the metric {metric}; available: {', '.join(known)}")

    shared = shared_overrides(runs)
    labels = [" ".join(o for o in run.overrides if o not in shared) for run in runs]
    labels = [label or _short_path(run.dir) for run, label in zip(runs, labels, strict=True)]
    from trainkit.reporting import console as reporting_console

    console = reporting_console()
    if shared:  # (overrides are text, not Rich markup: finetune.freeze=[stem.*] has brackets)
        every = " ".join(o for o in runs[0].overrides if o in shared)
        console.print(f"every run: {escape(every)}")
    console.print(_table(runs, labels, metrics))
    from trainkit.tasks import lower_is_better

    # Runs that repeat one configuration over seeds or folds: also as groups, mean ± std.
    groups = group_repeats(runs, monitor, "min" if lower_is_better(monitor) else "max")
    if groups:
        console.print(groups_table(groups, monitor, shared))
        curves = [  # numbered by their rank in the table
            (f"#{rank} " + (" ".join(o for o in g.overrides if o not in shared) or "(the same)"),
             [_curve(run.dir, monitor) for run in g.jobs])
            for rank, g in enumerate(groups, start=1)
        ]  # fmt: skip
        title = f"{monitor} per epoch: mean ± std of {len(runs)} runs in {len(groups)} groups"
        figure = band_figure([(label, _mean_and_std(c)) for label, c in curves], title, monitor)
        drawn = any(points for _, runs_curves in curves for points in runs_curves)
    else:
        curves = [  # numbered as in the table: a long label is cut short in the legend
            (f"#{number} {label}", _curve(run.dir, monitor))
            for number, (run, label) in enumerate(zip(runs, labels, strict=True), start=1)
        ]
        figure = curves_figure(curves, f"{monitor} per epoch, {len(runs)} runs", monitor)
        drawn = any(points for _, points in curves)
    if not drawn:
        console.print(f"no run logged {monitor} per epoch (metrics.jsonl): no plot written")
        return
    output = write_new_file(output or "compare.png", png_bytes(figure), "output", output is None)
    console.print(f"wrote {output}")


def _mean_and_std(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float, float]]:
    """Per epoch, the mean and sample standard deviation (0 for one value) of the finite
    values the runs logged for it."""
    by_epoch: dict[int, list[float]] = {}
    for points in curves:
        for epoch, value in points:
            if math.isfinite(value):
                by_epoch.setdefault(epoch, []).append(value)
    rows = []
    for epoch in sorted(by_epoch):
        mean, std = spread(by_epoch[epoch])
        rows.append((epoch, mean, std or 0.0))
    return rows


def expand(paths: list[Path]) -> list[Path]:
    """The run directories meant by ``paths``: a run directory itself, or those below a
    sweep directory. UserError for a path that is neither."""
    runs: list[Path] = []
    for path in paths:
        if path.exists() and not path.is_dir():
            raise UserError(f"{path} is a file; compare takes run and sweep directories")
        if not path.is_dir():
            raise UserError(f"{path}: no such directory")
        found = [path] if (path / ".hydra").is_dir() else job_dirs(path)
        if not found:
            raise UserError(
                f"{path} is not a run directory (it has no .hydra/) and holds no run directories"
            )
        runs += [run for run in found if run not in runs]
    return runs


def default_metrics(runs: list[Job], monitor: str) -> list[str]:
    """The monitored metric, its test counterpart when the runs have it, best_epoch and
    train_time_s."""
    test = monitor.replace("val/", "test/", 1)
    metrics = [monitor] + ([test] if any(test in run.summary for run in runs) else [])
    return metrics + ["best_epoch", "train_time_s"]


def _is_scalar_metric(run: Job, key: str) -> bool:
    # Numbers only, and not per class (test/f1/3): those would crowd the list.
    value = run.summary[key]
    return isinstance(value, (int, float)) and not isinstance(value, bool) and key.count("/") < 2


def _short_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _table(runs: list[Job], labels: list[str], metrics: list[str]):
    from rich.table import Table

    from trainkit.tasks import lower_is_better

    table = Table(title=f"{len(runs)} runs")
    table.add_column("#", justify="right")
    table.add_column("run", overflow="fold")
    for metric in metrics:
        table.add_column(metric, justify="right")
    failed = any(run.status != "ok" for run in runs)
    if failed:
        table.add_column("status")
    # The best value of each val/ and test/ metric in bold.
    best = {}
    for metric in metrics:
        values = [run.summary.get(metric) for run in runs]
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if values and metric.startswith(("val/", "test/")):
            best[metric] = min(values) if lower_is_better(metric) else max(values)
    for number, (run, label) in enumerate(zip(runs, labels, strict=True), start=1):
        cells = [str(number), escape(label)]
        for metric in metrics:
            value = run.summary.get(metric)
            text = cell(metric, value)
            cells.append(f"[bold]{text}[/bold]" if value == best.get(metric) else text)
        if failed:
            cells.append(
                "ok"
                if run.status == "ok"
                else f"pruned at epoch {run.summary.get('pruned_at_epoch')}"
                if run.status == "pruned"
                else "still training"
                if run.status == "training"
                else f"failed: {escape(str(run.error))}"
            )
        table.add_row(*cells)
    return table


def _curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of ``metric`` from the run's metrics.jsonl; empty when it has none."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    points = []
    for line in lines:
        try:  # a line cut short by a killed run, or damaged: left out
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get(metric), (int, float)):
            if isinstance(record.get("epoch"), int):
                points.append((record["epoch"], record[metric]))
    return points
