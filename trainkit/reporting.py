"""Where a run's numbers go: metrics.jsonl, TensorBoard, the console and the log file.

Only the main process logs: on other ranks every method returns at once.
The console and the log file are fed through Python's logging (configured by Hydra in
conf/train.yaml: rich on the terminal, plain text in the run's train.log).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from trainkit.overrides import command
from trainkit.settings import LoggerSettings

log = logging.getLogger("trainkit")

# The epoch line (kept under 80 columns) shows these, when present; files have everything.
_EPOCH_LINE_KEYS = {
    "train/loss": "loss",
    "val/loss": "val_loss",
    "val/acc": "val_acc",
    "val/rmse": "val_rmse",
    "val/knn_acc": "val_knn_acc",
    "val/seq_acc": "val_seq_acc",
    "lr": "lr",
}


# Seconds between progress bar redraws.
_REDRAW_S = 0.5


class RunLogger:
    def __init__(
        self,
        run_dir: Path,
        settings: LoggerSettings,
        enabled: bool = True,
        resume_epoch: int | None = None,
        resume_step: int | None = None,
    ):
        """``resume_epoch``/``resume_step``: the run continues from a checkpoint taken then;
        what was logged after it (before the run stopped) is dropped, so no epoch or step
        appears twice."""
        self.enabled, self.settings = enabled, settings
        self.writer = None
        if not enabled:
            return
        metrics_path = run_dir / "metrics.jsonl"
        if resume_epoch is not None and metrics_path.exists():
            kept = [
                line
                for line in metrics_path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["epoch"] <= resume_epoch
            ]
            from trainkit.checkpoint import write_text_atomically

            write_text_atomically("".join(f"{line}\n" for line in kept), metrics_path)
        self.metrics_file = open(metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        if settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides earlier events at or after the resumed step.
            purge_step = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    # --- per step -----------------------------------------------------------------------

    def should_log_step(self, step: int) -> bool:
        return self.enabled and step % self.settings.log_every_n_steps == 0

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def log_curve(self, tag: str, values: list[float], max_points: int = 2000) -> None:
        """A whole curve at once (the planned lr schedule), thinned to ``max_points``."""
        if self.writer is None:
            return
        stride = max(1, len(values) // max_points)
        for step in range(0, len(values), stride):
            self.writer.add_scalar(tag, values[step], step + 1)

    @contextmanager
    def progress(self, description: str, total: int):
        """A transient progress bar; yields ``advance(steps, **fields)``.

        Drawn from the training thread at most every ``_REDRAW_S`` seconds: rich's own
        refresh thread would redraw ten times a second and take the GIL from the training
        loop each time, and an eye reads no faster than this anyway.
        """
        # Only in a terminal: elsewhere a bar is a stream of control characters.
        if not (self.enabled and self.settings.progress_bar and is_terminal()):
            yield lambda *args, **kwargs: None
            return
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[throughput]}"),
            TimeRemainingColumn(),
            transient=True,
            auto_refresh=False,
        )
        with bar:
            task = bar.add_task(description, total=total, loss="-", throughput="")
            drawn = time.monotonic()

            def advance(steps: int = 1, **fields: str) -> None:
                nonlocal drawn
                bar.update(task, advance=steps, **fields)
                if time.monotonic() - drawn >= _REDRAW_S:
                    bar.refresh()
                    drawn = time.monotonic()

            yield advance

    # --- per epoch ----------------------------------------------------------------------

    def log_epoch(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl, TensorBoard scalars at the record's step, a console line."""
        if not self.enabled:
            return
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for key, value in record.items():
                # "lr" is logged every step already; here it would clash at the epoch's last step.
                if key not in ("epoch", "step", "lr") and isinstance(value, (int, float)):
                    # In the train/ group (epoch_time_s): TensorBoard lists groups by name,
                    # and train, val and test should come first.
                    tag = key if "/" in key else f"train/{key}"
                    self.writer.add_scalar(tag, value, record["step"])
            self.writer.flush()
        shown = "  ".join(
            f"{label} {_format(record[key])}"
            for key, label in _EPOCH_LINE_KEYS.items()
            if key in record
        )
        log.info(f"epoch {record['epoch']:>3}  {shown}  {record['epoch_time_s']:.1f}s")

    # --- at the end ---------------------------------------------------------------------

    def log_pr_curve(self, tag: str, targets, probabilities, step: int) -> None:
        """A precision-recall curve of a binary problem (TensorBoard's PR Curves tab)."""
        if self.writer is not None:
            self.writer.add_pr_curve(tag, targets, probabilities, step)

    def log_confusion_matrix(
        self, tag: str, matrix: list[list[int]], class_names: list[str], step: int
    ) -> None:
        """The confusion matrix as an image (TensorBoard's Images tab)."""
        if self.writer is not None:
            from trainkit.plotting import confusion_matrix_figure

            figure = confusion_matrix_figure(matrix, class_names)
            self.writer.add_figure(tag, figure, step, close=False)

    def log_layout(self, monitor: str) -> None:
        """TensorBoard's Custom Scalars tab: train and val loss on one chart, the monitored
        metric beside it (with its train counterpart), then the lr."""
        if self.writer is None:
            return
        metric = [monitor] + (["train/acc"] if monitor == "val/acc" else [])
        self.writer.add_custom_scalars(
            {
                "trainkit": {
                    "loss: train and val": ["Multiline", ["train/loss", "val/loss"]],
                    monitor: ["Multiline", metric],
                    "learning rate": ["Multiline", ["train/lr", "train/lr_planned"]],
                }
            }
        )

    def log_final(
        self,
        hparams: dict[str, Any],
        scalars: dict[str, float],
        columns: dict[str, float],
        step: int,
    ):
        """Final ``scalars`` (and ``columns``), and the run's row in TensorBoard's HParams
        table: ``hparams`` and the metric ``columns`` (the best monitored value, ...)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        for key, value in {**scalars, **columns}.items():
            self.writer.add_scalar(key, value, step)
        # Written into this run's own event file (SummaryWriter.add_hparams would make a
        # new sub-run), so `tensorboard --logdir outputs/` lists one row per run.
        for summary in hparams_summary(hparams, columns):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.metrics_file.close()
        if self.writer is not None:
            self.writer.close()


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


# What a reader of any run wants to see, whatever else was set.
_ALWAYS_SHOWN = (
    "model",
    "optimizer",
    "optimizer.lr",
    "data.batch_size",
    "scheduler",
    "trainer.max_epochs",
)


def chosen_hparams(
    config: dict[str, Any], overrides: list[str], swept: list[str] | None = None
) -> dict[str, Any]:
    """The hyperparameters a run's row shows in TensorBoard. A sweep's job: the keys its
    sweep varies (``swept``), then the fixed few while there is room: TensorBoard shows five
    columns unasked, in name order, and what varies must be among them. A single run: what
    its overrides set, and the fixed few. A group shows its option's name
    (``optimizer: adam``); numbers are shown as they are written (64, not 64.000)."""
    if swept is not None:
        keys = list(dict.fromkeys(swept))
        keys += [key for key in _ALWAYS_SHOWN if key not in keys][: max(0, 5 - len(keys))]
    else:
        keys = list(_ALWAYS_SHOWN)
        for override in overrides:
            key = override.lstrip("+~").partition("=")[0]
            if key and not key.startswith("hydra") and key not in ("plugins", "resume", *keys):
                keys.append(key)
    chosen: dict[str, Any] = {}
    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):  # a group: its option
            node = node.get("name") or ",".join(node)  # (regularization: its names)
        if node is not None:
            chosen[key] = _hparam_value(node)
    return chosen


def _hparam_value(value: Any) -> Any:
    # TensorBoard's numbers are floats, drawn with five digits (64.000): an int as text.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (bool, str)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return str(value)


def is_terminal() -> bool:
    """Whether the console is a terminal (not a pipe, a file, CI's log, SLURM's output)."""
    return sys.stdout.isatty()


def console():
    """rich's console: as rich draws it in a terminal; elsewhere plain lines that are never
    padded, wrapped or coloured, so that a log file reads and pastes as it was printed."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich exits 1 here; `trainkit ls | head` should end as other tools do (141),
            # which cli.main does for a BrokenPipeError.
            self.quiet = True
            raise BrokenPipeError

    if is_terminal():
        return _Console()
    return _Console(width=100_000, soft_wrap=True, no_color=True, highlight=False)


def console_handler(prefix: str = "") -> logging.Handler:
    """The log's console: rich's handler in a terminal, plain lines elsewhere; ``prefix``
    goes before each line (a sweep's job number). Named in conf/train.yaml's job_logging."""
    if is_terminal():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_time=False, show_path=False, show_level=False)
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + "%(message)s"))
    handler.trainkit_console = True  # (found again by quiet_console)
    return handler


def quiet_console(prefix: str) -> None:
    """In a sweep's job: the console shows only warnings and errors, after ``prefix`` (the
    log file keeps everything): many jobs' epoch lines would bury what matters."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "trainkit_console", False):
            handler.setLevel(logging.WARNING)
            handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + "%(message)s"))


def setup_console_logging() -> None:
    """Console logging for commands that run outside Hydra (``trainkit eval``)."""
    logging.basicConfig(level=logging.INFO, handlers=[console_handler()], force=True)


# ``log.warning(..., extra=OWN_SHARE)``: a warning about this process's share of the work
# (the images it decoded), which the other DDP processes cannot say for it.
OWN_SHARE = {"own_share": True}


def _own_share_or_error(record: logging.LogRecord) -> bool:
    """What a DDP process other than the main one says: its errors and the warnings about its
    own share. Every process finds a config's warning or a Ctrl-C alike; the main one says it."""
    return record.levelno >= logging.ERROR or getattr(record, "own_share", False)


def setup_worker_logging(run_dir: Path, main: bool, sweep_job: str = "") -> None:
    """Logging in a DDP worker process: the main one writes to the console and appends to
    the run's train.log (as Hydra set up for a single process); the others say only their
    errors and the warnings about their own share (``OWN_SHARE``).
    ``sweep_job``: the job's prefix when the run is a sweep's job (a quiet console)."""
    handlers: list[logging.Handler] = []
    if main:
        handlers.append(console_handler())
        file_handler = logging.FileHandler(run_dir / "train.log")
        file_handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
        handlers.append(file_handler)
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING,
        handlers=handlers or None,
        # (the others' warnings on stderr, said to be theirs)
        format=f"[rank {os.environ.get('RANK', '?')}] %(message)s",
        force=True,
    )
    if not main:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_own_share_or_error)
    if sweep_job:
        quiet_console(sweep_job)


_SUMMARY_METRICS = (
    "loss",
    "acc",
    "balanced_acc",
    "acc_top5",
    "precision",
    "recall",
    "f1",
    "auroc",
    "average_precision",
    "mae",
    "rmse",
    "r2",
    "knn_acc",
    "seq_acc",
    "cer",
)


def print_summary(summary: dict[str, Any], output_dir: Path, eval_only: bool = False) -> None:
    """The test metrics as a table, then where the files are and how to look at them."""
    from rich.table import Table

    table = Table(title="test metrics", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in _SUMMARY_METRICS:
        if f"test/{name}" in summary:
            table.add_row(name, f"{summary[f'test/{name}']:.4f}")
    out = console()
    out.print(table)
    if eval_only:
        out.print(f"summary.json and predictions.csv written to {output_dir}")
    else:
        out.print(f"run directory: {output_dir}")
        out.print(f"compare runs:  {command('tensorboard', '--logdir', str(output_dir.parent))}")


def job_line(summary: dict[str, Any], output_dir: Path) -> str:
    """A sweep's job in one line: its monitored value, the test metric beside it, its time
    and its directory (its table of test metrics is in its train.log and summary.json)."""
    monitor = summary.get("monitor", "")
    test = monitor.replace("val/", "test/", 1)
    parts = [f"{name} {_format(summary[name])}" for name in (monitor, test) if name in summary]
    parts.append(f"{summary.get('train_time_s', 0):.1f}s")
    how = (
        f"pruned at epoch {summary['pruned_at_epoch']}" if "pruned_at_epoch" in summary else "done"
    )
    return f"{how}: {', '.join(parts)} -> {output_dir}"


def log_summary(summary: dict[str, Any], console_too: bool = True) -> None:
    """The test metrics into the log (a sweep's job: its file, as its console is one line a
    job); ``console_too=False``: into the log's files only (a run prints them as a table)."""
    names = [f"test/{name}" for name in _SUMMARY_METRICS if f"test/{name}" in summary]
    message = "test metrics: " + ", ".join(f"{n} {_format(summary[n])}" for n in names)
    if console_too:
        log.info(message)
        return
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:  # Hydra's job logging: the root's handlers
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
