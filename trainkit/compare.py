"""``trainkit compare``: runs side by side, as a table of their metrics and a PNG of their
validation curves (drawn with Pillow, like trainkit/plotting.py).

A run directory is one with a ``.hydra/`` in it; any other directory (a sweep's, or a day's
under outputs/) stands for the run directories below it.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from trainkit.errors import UserError
from trainkit.rundir import write_new_file
from trainkit.sweeps import Job, job_dirs, read_job, shared_overrides

WIDTH, PLOT_HEIGHT, LEGEND_ROW = 800, 400, 16
# Plot area margins in pixels: room for the y labels on the left, x labels below.
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 30, 40
Y_TICKS = 5
# matplotlib's tab10: ten colours told apart easily, also by most colour-blind readers.
COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def compare(paths: list[Path], metrics: list[str], output: Path) -> None:
    """Print a table of ``metrics`` (default: the monitored metric, its test counterpart,
    best_epoch, train_time_s) for every run under ``paths`` and write their curves of the
    monitored metric to ``output``. Raises UserError for a path that holds no run or a
    metric that no run has."""

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
    if shared:
        console.print(f"every run: {' '.join(o for o in runs[0].overrides if o in shared)}")
    console.print(_table(runs, labels, metrics))
    curves = [(label, _curve(run.dir, monitor)) for run, label in zip(runs, labels, strict=True)]
    if not any(points for _, points in curves):
        console.print(f"no run logged {monitor} per epoch (metrics.jsonl): no plot written")
        return
    png = io.BytesIO()
    write_curves_png(curves, png, f"{monitor} per epoch")
    write_new_file(output, png.getvalue(), "output")
    console.print(f"wrote {output}")


def expand(paths: list[Path]) -> list[Path]:
    """The run directories meant by ``paths``: a run directory itself, or those below a
    sweep directory. UserError for a path that is neither."""
    runs: list[Path] = []
    for path in paths:
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
        cells = [str(number), label]
        for metric in metrics:
            value = run.summary.get(metric)
            text = (
                "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
            )
            cells.append(f"[bold]{text}[/bold]" if value == best.get(metric) else text)
        if failed:
            cells.append("ok" if run.status == "ok" else f"failed: {run.error}")
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


def write_curves_png(
    curves: list[tuple[str, list[tuple[int, float]]]], path: Path, title: str
) -> Path:
    """Draw each ``(label, [(epoch, value), ...])`` in its own colour, with a legend below the
    plot (800 pixels wide); non-finite values leave a gap. Returns the path written."""
    from PIL import Image, ImageDraw, ImageFont

    finite = [v for _, points in curves for _, v in points if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high == low:  # a flat curve: put it in the middle of the plot
        low, high = low - (abs(low) * 0.1 or 0.1), high + (abs(high) * 0.1 or 0.1)
    last_epoch = max((epoch for _, points in curves for epoch, _ in points), default=1)
    first_epoch = min((epoch for _, points in curves for epoch, _ in points), default=1)
    span = max(last_epoch - first_epoch, 1)

    height = PLOT_HEIGHT + LEGEND_ROW * len(curves) + 10
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, PLOT_HEIGHT - BOTTOM  # y0 is the top

    def to_x(epoch: float) -> float:
        return x0 + (x1 - x0) * (epoch - first_epoch) / span

    def to_y(value: float) -> float:
        return y1 - (y1 - y0) * (value - low) / (high - low)

    # --- axes, ticks and labels ---
    draw.text((WIDTH / 2, TOP / 2), title, fill="black", font=font, anchor="mm")
    for tick in range(Y_TICKS):
        value = low + (high - low) * tick / (Y_TICKS - 1)
        y = to_y(value)
        draw.line([(x0, y), (x1, y)], fill=(230, 230, 230))
        draw.text((x0 - 8, y), f"{value:.3g}", fill="black", font=font, anchor="rm")
    step = max(1, round(span / 10))  # at most about ten epoch labels
    for epoch in range(first_epoch, last_epoch + 1, step):
        x = to_x(epoch)
        draw.line([(x, y1), (x, y1 + 5)], fill="black")
        draw.text((x, y1 + 8), str(epoch), fill="black", font=font, anchor="mt")
    draw.text(((x0 + x1) / 2, PLOT_HEIGHT - 6), "epoch", fill="black", font=font, anchor="mb")
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")

    # --- one curve per run, its points marked; then the legend ---
    for index, (label, points) in enumerate(curves):
        colour = COLOURS[index % len(COLOURS)]
        segment: list[tuple[float, float]] = []
        for epoch, value in [*points, (0, math.nan)]:  # the NaN at the end closes the line
            if math.isfinite(value):
                segment.append((to_x(epoch), to_y(value)))
                continue
            if len(segment) > 1:
                draw.line(segment, fill=colour, width=2)
            for x, y in segment:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            segment = []
        y = PLOT_HEIGHT + LEGEND_ROW * index + LEGEND_ROW / 2
        draw.line([(x0, y), (x0 + 24, y)], fill=colour, width=3)
        text = f"{index + 1}: {label}" + ("" if points else "  (no epochs logged)")
        draw.text((x0 + 32, y), text[:110], fill="black", font=font, anchor="lm")

    image.save(path, format="PNG")
    return path
