"""The assembly: one function, ``build``, turns a config into a run's parts.

Every verb builds through it (training, evaluation, planning the lr), so ``lr-plot`` cannot
plan a different run from the one ``train`` runs. What a purpose does not need is not built:
evaluation builds no optimizer, planning puts nothing on a GPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Subset

from trainkit import config, distributed, finetune
from trainkit.data import Splits, build_loaders, stop_workers
from trainkit.data.splits import check_labels, k_fold
from trainkit.errors import UserError, first_line
from trainkit.registry import (
    AUGMENTATIONS,
    DATASETS,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    REGULARIZERS,
    TASKS,
)
from trainkit.reporting import log
from trainkit.schedulers import Schedule, build_schedule, lr_curve
from trainkit.settings import (
    FinetuneSettings,
    TrainerSettings,
    finetune_settings,
    split_data_node,
    trainer_settings,
)
from trainkit.speed import Speed
from trainkit.tasks import Task, logged_metrics, lower_is_better

Purpose = Literal["train", "evaluate", "plan", "find_lr"]
# A run's planned lr curve (train/lr_planned in TensorBoard) takes about 20 us a step to
# compute; a longer run goes without it.
PLANNED_STEPS_LIMIT = 50_000


@dataclass
class Parts:
    """What a run is made of. ``cfg`` is the effective config: the settings regularizers
    stand for (``regularization=[weight_decay]``) written in, as checkpoints keep it."""

    cfg: DictConfig
    settings: TrainerSettings
    finetune: FinetuneSettings
    device: torch.device
    speed: Speed
    regularizers: list
    splits: Splits
    loaders: dict[str, Any]
    task: Task
    model: nn.Module
    loss_fn: nn.Module
    monitor: str  # the metric that picks the best checkpoint, and its direction
    mode: str
    # Built to train and to plan (not to evaluate):
    optimizer: torch.optim.Optimizer | None = None
    train_batches: int = 0  # per epoch and process, after trainer.limit_train_batches
    steps_per_epoch: int = 0  # optimizer steps: one per trainer.accumulate batches
    planned_lrs: list[float] | None = None  # the lr of param group 0 at every step (planned)
    schedule: Schedule | None = None  # built to train only

    def close(self) -> None:
        """Stop the loaders' worker processes: the verb is done with its data."""
        stop_workers(self.loaders)


def build(cfg: DictConfig, purpose: Purpose, splits: Splits | None = None) -> Parts:
    """The parts of the run ``cfg`` describes, for ``purpose``:

    - ``"train"``: everything, on the run's device, for this process of the run;
    - ``"evaluate"``: data, task, model and loss on the run's device; with ``splits`` (a
      checkpoint's description of its data, ``Splits.described``) no data is read and no
      loader made: the model for new inputs (``trainkit predict``, ``export``);
    - ``"plan"``: on the CPU, everything the lr depends on, as the run will have it with
      ``trainer.devices`` processes (for ``lr-plot``);
    - ``"find_lr"``: what ``"train"`` builds but the schedule, in one process (for
      ``lr-find``, which sets the lr itself).

    Raises UserError for what only building can find (a data set too small to split, a
    monitored metric the task does not log, ...).
    """
    cfg = config.effective(cfg)
    if purpose == "evaluate" and cfg.model.get("weights") is not None:
        # The checkpoint's weights replace what the run started from: that file (ImageNet's,
        # in torch hub's cache) is not read, and need not be on the machine that evaluates.
        cfg.model.weights = None
    settings = trainer_settings(cfg.trainer)
    tune = finetune_settings(cfg.get("finetune"))
    planning = purpose == "plan"
    device = torch.device("cpu") if planning else distributed.resolve_device(settings.device)
    world, rank = (
        (settings.devices, 0) if planning else (distributed.world_size(), distributed.rank())
    )
    training = purpose in ("train", "find_lr")
    if training and settings.deterministic:
        # cuBLAS repeats its sums only with this workspace, read when it starts (before the
        # first product). An op with no deterministic CUDA kernel (the backward of adaptive
        # average pooling, in every ResNet; CTC's) warns, naming itself, and the run goes on.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    # Each rank draws its own augmentation randomness; the split seed (data.seed) is shared.
    seed_everything(settings.seed + rank)
    speed = Speed(device) if planning else _speed(settings, device)
    regularizers = [
        REGULARIZERS.build(node, f"regularization.{key}")
        for key, node in (cfg.get("regularization") or {}).items()
    ]

    # --- data, and the task its targets are for ---
    overfit = 0 if purpose == "evaluate" else settings.overfit_batches
    if splits is not None:
        loaders: dict[str, Any] = {}
    else:
        splits, loaders = build_data(cfg, settings.seed, overfit, device, world, rank)
    task = TASKS.build(cfg.task, "task", splits=splits, loss=cfg.loss)
    monitor, mode = resolve_monitor(settings, type(task))
    if purpose != "evaluate":
        check_monitor(monitor, task)

    # --- model and loss ---
    _check_model_reads_tokens(cfg.model.name, splits, cfg.data.name)
    model = MODELS.build(
        cfg.model,
        "model",
        num_classes=task.head_size,
        input_shape=splits.input_shape,
        vocab_size=splits.vocab_size,
    ).to(device)
    if training:
        # Trained weights to start from (a resumed run has its own, from its checkpoint).
        # Frozen first: a pattern that matches nothing is refused before init_from reports.
        frozen = finetune.freeze(model, tune.freeze) if tune.freeze else []
        if cfg.get("init_from") and not cfg.get("resume"):
            report = finetune.init_from(model, cfg.init_from)
            finetune.warn_if_frozen_unloaded(frozen, report["loaded"], tune.unfreeze_at_epoch)
        if frozen:
            log.info(f"finetune: froze {len(frozen)} tensors; {finetune.trainable_summary(model)}")
        model = speed.prepare(model)
        if settings.sync_batchnorm and world > 1:
            if device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:  # torch's SyncBatchNorm runs on GPUs only
                log.info("note: trainer.sync_batchnorm applies to CUDA only; ignored on CPU")
    loss_fn = LOSSES.build(
        cfg.loss, "loss", num_classes=splits.num_classes, class_counts=class_counts(splits)
    ).to(device)
    parts = Parts(
        cfg, settings, tune, device, speed, regularizers, splits, loaders, task, model,
        loss_fn, monitor, mode,
    )  # fmt: skip
    if purpose == "evaluate":
        return parts

    # --- optimizer and lr schedule ---
    parts.optimizer = OPTIMIZERS.build(cfg.optimizer, "optimizer", model=model)
    if settings.lr_reference_batch:
        # The linear scaling rule (Goyal et al. 2017): the lr grows with the global batch,
        # the samples of one optimizer step (accumulated batches too), so one recipe trains
        # alike on 1 or 8 GPUs, or with a batch cut to fit. Before the schedule reads the lrs.
        global_batch = loaders["train"].batch_size * world * settings.accumulate
        for group in parts.optimizer.param_groups:
            group["lr"] *= global_batch / settings.lr_reference_batch
    batches = len(loaders["train"])
    parts.train_batches = min(batches, settings.limit_train_batches or batches)
    if parts.train_batches == 0:
        raise UserError("the train split has no batch; lower data.batch_size")
    parts.steps_per_epoch = math.ceil(parts.train_batches / settings.accumulate)
    plan = (parts.steps_per_epoch, settings.max_epochs, monitor, mode)
    # Planned first: lr_curve reads the optimizer's lrs before a schedule changes them. A
    # run plans its lr for TensorBoard only when that is quick (it steps a schedule through
    # every step): lr-plot plans any length, being asked to.
    steps = parts.steps_per_epoch * settings.max_epochs
    if planning or (purpose == "train" and steps <= PLANNED_STEPS_LIMIT):
        parts.planned_lrs = lr_curve(cfg.scheduler, parts.optimizer, *plan)
    if purpose == "train":
        parts.schedule = build_schedule(cfg.scheduler, parts.optimizer, *plan)
    return parts


# --- the pieces ----------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _speed(settings: TrainerSettings, device: torch.device) -> Speed:
    return Speed(
        device,
        settings.precision,
        settings.channels_last,
        settings.compile,
        settings.cudnn_benchmark,
        settings.deterministic,
    )


def build_data(
    cfg: DictConfig,
    seed: int,
    overfit_batches: int = 0,
    device: torch.device | str = "cpu",
    world_size: int = 1,
    rank: int = 0,
):
    """The data set's splits (train split augmented) and a loader for each, for process
    ``rank`` of ``world_size``; ``device`` is where ``data.on_device`` puts them and what
    ``data.pin_memory=auto`` pins for."""
    dataset_node, loader_settings = split_data_node(cfg.data)
    folds = loader_settings.folds
    with distributed.main_process_first(), k_fold(folds, loader_settings.fold) as folding:
        splits = DATASETS.build(dataset_node, "data")  # (one process downloads, then the rest)
    if folds and not folding[2]:
        raise UserError(
            f"data.folds={folds}: data={cfg.data.name} does not carve its val split from "
            "train here (it has a val split of its own, or data.val_fraction=0); folds are "
            "cut from train, so use a data set whose val split is carved from it"
        )
    check_labels(splits)
    for split_name in ("val", "test"):
        size = len(getattr(splits, split_name))
        if size == 0:
            raise UserError(f"data.{split_name}_fraction leaves the {split_name} split empty")
        if size < world_size:  # each process evaluates a share of it: none may be empty
            raise UserError(
                f"data: the {split_name} split has {size} samples, fewer than the "
                f"{world_size} processes (trainer.devices) that each evaluate a share of it; "
                f"give it more (data.{split_name}_fraction) or train in fewer processes"
            )
    splits.train.transform = AUGMENTATIONS.build(
        cfg.augmentation, "augmentation", image_size=splits.image_size
    )
    _check_augmentation(splits, cfg.augmentation.name)
    if overfit_batches:
        # A model that cannot drive the loss of a few batches to ~0 has a bug.
        few = Subset(
            splits.train,
            range(min(len(splits.train), overfit_batches * loader_settings.batch_size)),
        )
        splits = dataclasses.replace(splits, train=few, val=few)
    loaders = build_loaders(splits, loader_settings, seed, world_size, rank, device)
    return splits, loaders


def _check_augmentation(splits: Splits, name: str) -> None:
    """The train split's augmentation on its first sample, once, before training: a step
    torchvision refuses for this data (a crop larger than its images, a zero std) is one
    line now, not a traceback from a loader's worker. Its random numbers are not the run's."""
    if getattr(splits.train, "transform", None) is None or len(splits.train) == 0:
        return
    train = splits.train
    with torch.random.fork_rng(devices=[]):
        try:
            # As its loader reads it (an image folder leaves out an image it cannot decode):
            # a batch of one, whose first input is the sample.
            if callable(getattr(train, "__getitems__", None)):
                sample = train.__getitems__([0])[0][0]
            else:
                sample = train[0][0]
        except UserError:
            raise
        except Exception as error:
            raise UserError(
                f"augmentation={name} fails on this data's first training sample "
                f"({first_line(error)}); "
                "fix its steps for these images, or choose another augmentation"
            ) from None
    shape = tuple(getattr(sample, "shape", ()))
    if isinstance(sample, torch.Tensor) and shape != tuple(splits.input_shape):
        raise UserError(
            f"augmentation={name} turns this data's samples into shape {shape}, and the model "
            f"takes {tuple(splits.input_shape)}; fix its steps for these images"
        )


def class_counts(splits: Splits) -> list[int] | None:
    """How many train samples each class has (for ``class_weights=balanced``); None without
    class labels or without samples (a checkpoint's description of its data)."""
    from trainkit.data.splits import class_labels

    if splits.target_kind != "class" or len(splits.train) == 0:
        return None
    labels = class_labels(splits.train)
    if labels is None:
        return None
    return torch.bincount(labels, minlength=splits.num_classes).tolist()


def resolve_monitor(settings: TrainerSettings, task: type[Task]) -> tuple[str, str]:
    """The monitored metric and its direction, ``auto`` resolved from the task (its class:
    what it monitors is known before any data is read)."""
    monitor = task.default_monitor if settings.monitor == "auto" else settings.monitor
    mode = settings.monitor_mode
    if mode == "auto":
        mode = "min" if lower_is_better(monitor) else "max"
    return monitor, mode


def monitored_metric(cfg: DictConfig) -> tuple[str, str]:
    """The metric that runs of ``cfg`` monitor and its direction, without building them."""
    return resolve_monitor(trainer_settings(cfg.trainer), TASKS.get(cfg.task.name))


def check_monitor(monitor: str, task: Task) -> None:
    """UserError unless the run logs ``monitor`` (a metric of this task, or a loss)."""
    known = logged_metrics(type(task), task.score_names(), ("train", "val"))
    if monitor not in known:
        raise UserError(
            f"trainer.monitor={monitor!r} is not a logged metric; use one of "
            + ", ".join(sorted(known))
        )


def _check_model_reads_tokens(name: str, splits: Splits, data: str) -> None:
    """Token ids are indices, not numbers: a model that does not ask for the vocabulary
    would multiply them as features (and fail on their integer type)."""
    if splits.vocab_size is None or MODELS.takes(name, "vocab_size"):
        return
    readers = [model for model in MODELS.names() if MODELS.takes(model, "vocab_size")]
    raise UserError(
        f"model {name} reads numbers, and data={data} gives the token ids of texts; use "
        f"model={' or model='.join(readers)}"
    )
