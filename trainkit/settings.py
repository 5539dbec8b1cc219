"""The settings nodes of a run's config, as dataclasses whose typed fields are the schema:
``trainer``, ``logger``, and the keys of ``data`` and ``scheduler`` that every option shares.

Nothing here imports torch: the CLI checks a config against these before anything heavy is
loaded, and before any directory exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from trainkit.errors import UserError
from trainkit.registry import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Range,
    check_params,
)


@dataclass
class TrainerSettings:
    """The ``trainer`` node: how long, where, and what "best" means."""

    max_epochs: PositiveInt = 30
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N
    seed: int = 0
    monitor: str = "auto"  # auto: the task's own (val/acc for classification)
    monitor_mode: Literal["auto", "max", "min"] = "auto"  # auto: min for losses and errors
    deterministic: bool = False
    # Speed: mixed precision (32, bf16, fp16 with a grad scaler), memory layout, compiling.
    precision: Literal[32, "bf16", "fp16"] = 32
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = False
    accumulate: PositiveInt = 1  # batches whose gradients make one optimizer step
    # Several processes (DDP): started by trainkit itself, or by torchrun (then ignored).
    devices: PositiveInt = 1
    sync_batchnorm: bool = False  # batch statistics over all processes' batches
    # Linear lr scaling: lr x (global batch / lr_reference_batch), e.g. 256; 0 keeps the lr.
    # The global batch: the samples of one optimizer step, over processes and accumulation.
    lr_reference_batch: NonNegativeInt = 0
    # Checkpoints: last.pt at every epoch's end, and every this many optimizer steps (0: only
    # at epoch ends); the newest keep_last of those and the keep_best best stay as files too.
    checkpoint_every: NonNegativeInt = 0
    keep_last: NonNegativeInt = 0
    keep_best: PositiveInt = 1
    # A loss or gradient norm that is NaN or infinite: error (stop and say where), skip (the
    # update; stop after nonfinite_max_skips), rollback (reload last.pt, lr x nonfinite_lr_factor;
    # at most nonfinite_max_rollbacks times). skip and rollback check every step (a host sync).
    nonfinite: Literal["error", "skip", "rollback"] = "error"
    nonfinite_max_skips: PositiveInt = 10
    nonfinite_lr_factor: Annotated[float, Range(gt=0, lt=1)] = 0.5
    nonfinite_max_rollbacks: PositiveInt = 3
    # Debugging (the `debug` group sets these): batches per epoch of each split, 0 = all;
    # overfit_batches > 0 trains and validates on the same first few train batches.
    limit_train_batches: NonNegativeInt = 0
    limit_eval_batches: NonNegativeInt = 0
    overfit_batches: NonNegativeInt = 0


@dataclass
class FinetuneSettings:
    """The ``finetune`` node: what of a model that starts from trained weights (``init_from``,
    ``model.weights``) stays as it is, and for how long."""

    freeze: list[str] = field(default_factory=list)  # parameter-name globs: "conv1.*"
    unfreeze_at_epoch: NonNegativeInt = 0  # unfreeze them when this epoch starts; 0: never
    freeze_norm: bool = False  # batch norm keeps its running statistics


@dataclass
class LoggerSettings:
    """The ``logger`` node: where a run's numbers go, and how often."""

    tensorboard: bool = True
    progress_bar: bool = True
    log_every_n_steps: PositiveInt = 25


@dataclass
class LoaderSettings:
    """The keys of the ``data`` node that shape batches rather than choose the data."""

    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt = 256
    num_workers: NonNegativeInt = 0
    pin_memory: bool | Literal["auto"] = "auto"  # auto: when the run's device is CUDA
    prefetch_factor: PositiveInt | None = None  # per worker; None: torch's default (2)
    on_device: bool = False
    sampler: Literal["shuffle", "balanced"] = "shuffle"  # balanced: classes drawn equally
    # k-fold cross-validation: train+val cut into `folds` stratified folds, fold `fold` the
    # val split (the test split stays as it was). 0: no folds.
    folds: NonNegativeInt = 0
    fold: NonNegativeInt = 0


@dataclass
class ScheduleSettings:
    """The keys every ``scheduler`` node may have besides its own."""

    interval: Literal["step", "epoch"] = "step"
    warmup_epochs: NonNegativeFloat = 0.0
    warmup_start_factor: Annotated[float, Range(gt=0, le=1)] = 0.01


def trainer_settings(node: Mapping[str, Any]) -> TrainerSettings:
    """The ``trainer`` node, checked."""
    return TrainerSettings(**check_params("trainer", node, TrainerSettings))


def finetune_settings(node: Mapping[str, Any] | None) -> FinetuneSettings:
    """The ``finetune`` node, checked (absent: nothing frozen)."""
    return FinetuneSettings(**check_params("finetune", node or {}, FinetuneSettings))


def logger_settings(node: Mapping[str, Any]) -> LoggerSettings:
    """The ``logger`` node, checked."""
    return LoggerSettings(**check_params("logger", node, LoggerSettings))


def split_data_node(node: Mapping[str, Any]) -> tuple[dict[str, Any], LoaderSettings]:
    """Separate the data node into the dataset's own keys and the loader settings."""
    loader_keys = set(LoaderSettings.__dataclass_fields__)
    dataset_node = {k: v for k, v in node.items() if k not in loader_keys}
    loader = {k: v for k, v in node.items() if k in loader_keys}
    settings = LoaderSettings(**check_params("data", loader, LoaderSettings))
    if settings.folds == 1:
        raise UserError("data.folds=1 is no cross-validation: use data.folds=0, or 2 or more")
    if settings.folds and settings.fold >= settings.folds:
        raise UserError(
            f"data.fold={settings.fold} must be below data.folds={settings.folds} "
            f"(folds 0 to {settings.folds - 1})"
        )
    if settings.fold and not settings.folds:
        raise UserError(
            f"data.fold={settings.fold} needs data.folds=K, the number of folds (5, say)"
        )
    if settings.prefetch_factor is not None and settings.num_workers == 0:
        raise UserError(
            f"data.prefetch_factor={settings.prefetch_factor} counts the batches each worker "
            "loads ahead, and data.num_workers=0 starts none: set data.num_workers or "
            "data.prefetch_factor=null"
        )
    return dataset_node, settings


# Schedules that warm up by themselves, and the keys that say how: a warmup_epochs before
# theirs would hold the lr at their starting point (0 for inverse_sqrt), not ramp it.
OWN_WARMUP = {
    "inverse_sqrt": "scheduler.warmup (steps) and scheduler.warmup_lr",
    "onecycle": "scheduler.pct_start",
}


def split_scheduler_node(node: Mapping[str, Any]) -> tuple[dict[str, Any], ScheduleSettings]:
    """Separate the schedule's own keys from the shared interval and warmup settings."""
    shared = set(ScheduleSettings.__dataclass_fields__)
    own = {k: v for k, v in node.items() if k not in shared}
    settings = {k: v for k, v in node.items() if k in shared}
    checked = ScheduleSettings(**check_params("scheduler", settings, ScheduleSettings))
    name = own.get("name")
    if checked.warmup_epochs and name in OWN_WARMUP:
        raise UserError(
            f"scheduler={name} warms up by itself ({OWN_WARMUP[name]}); leave out "
            f"scheduler.warmup_epochs={checked.warmup_epochs:g}"
        )
    return own, checked
