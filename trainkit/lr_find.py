"""``trainkit lr-find``: the learning-rate range test (Smith 2017, "Cyclical Learning Rates
for Training Neural Networks", section 3.3; the form fastai and Lightning ship).

From a fresh build of the run (its data, model, optimizer, regularizers and precision), the
lr grows exponentially from ``min_lr`` to ``max_lr``, one optimizer step each, while the
loss is recorded; the test stops once a running average of the loss passes ``diverge``
times its best. The lr to train with lies where the loss, smoothed, falls fastest before
its minimum. Nothing is saved: the model trained here is thrown away.

The smoothing for the suggestion is centred (each step's mean with its neighbours on both
sides), unlike fastai's and Lightning's running average with factor 0.98: over 100 steps
that average lags the loss by tens of steps, more than a decade of lr, and moves its
minimum to where training already diverges.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from trainkit import finetune
from trainkit.build import Parts, build
from trainkit.errors import UserError
from trainkit.runner import apply_update, batch_loss

RUNNING = 0.9  # the running average that decides when the loss diverged (bias-corrected)


@dataclass
class RangeTest:
    lrs: list[float]  # optimizer.lr at each step (param groups keep their ratios to it)
    losses: list[float]  # the training loss of each step
    smoothed: list[float]  # their centred moving average (a tenth of the steps wide)
    stopped: str  # why the test ended before max_lr; "" when it reached it
    steepest: float | None  # the lr where the smoothed loss falls fastest, before its minimum
    minimum: float  # the lr of the smallest smoothed loss

    @property
    def suggestion(self) -> float:
        """The steepest descent; the minimum / 10 when the curve falls too little to say."""
        return self.steepest if self.steepest is not None else self.minimum / 10


def find_lr(
    cfg: DictConfig, min_lr: float, max_lr: float, steps: int, diverge: float = 4.0
) -> tuple[RangeTest, Parts]:
    """Run the range test on the run ``cfg`` describes (one process, its device)."""
    parts = build(cfg, "find_lr")
    base = float(parts.cfg.optimizer.get("lr") or 0)
    if base <= 0:
        raise UserError(
            f"optimizer={parts.cfg.optimizer.name} has no positive optimizer.lr to scale"
        )
    optimizer, model = parts.optimizer, parts.model
    # Each group keeps its ratio to optimizer.lr (layer decay, multipliers, lr scaling), so
    # the lr found is the one to write as optimizer.lr.
    ratios = [group["lr"] / base for group in optimizer.param_groups]
    batches = _endless(parts)
    test = RangeTest([], [], [], "", None, min_lr)
    average, best = 0.0, math.inf
    model.train()
    if parts.finetune.freeze_norm:
        finetune.keep_norm_statistics(model)
    try:
        for step in range(steps):
            lr = min_lr * (max_lr / min_lr) ** (step / max(steps - 1, 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            loss = _step(parts, batches)
            if not math.isfinite(loss):
                test.stopped = f"the loss was {loss} at lr {lr:.3g}"
                break
            average = RUNNING * average + (1 - RUNNING) * loss
            running = average / (1 - RUNNING ** (step + 1))
            test.lrs.append(lr)
            test.losses.append(loss)
            best = min(best, running)
            # "diverge times its best", for losses that may be negative too (Poisson NLL's).
            if running > best + (diverge - 1) * abs(best):
                test.stopped = f"the loss passed {diverge:g}x its best at lr {lr:.3g}"
                break
    finally:
        parts.close()  # its loader's worker processes
    if test.stopped and len(test.lrs) <= max(2, steps // 10):
        raise UserError(
            f"the loss diverged within the first {len(test.lrs) + 1} steps ({test.stopped}): "
            f"the range starts too high or climbs too fast; lower min_lr={min_lr:g} or "
            f"max_lr={max_lr:g}, or take more steps"
        )
    test.smoothed = _centred_mean(test.losses, max(3, steps // 10))
    test.minimum, test.steepest = _suggestions(test.lrs, test.smoothed)
    return test, parts


def _endless(parts: Parts) -> Iterator:
    """The train loader's batches epoch after epoch (a small data set wraps around), each
    epoch as ``trainer.limit_train_batches`` cuts it."""
    loader = parts.loaders["train"]
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from itertools.islice(loader, parts.train_batches)


def _step(parts: Parts, batches: Iterator) -> float:
    """One optimizer step of ``trainer.accumulate`` batches, as the train loop takes it
    (mixing, penalties, precision, clipping, each batch weighed by its samples, as one batch
    of them all); returns the step's mean loss."""
    speed, total = parts.speed, 0.0
    step = [next(batches) for _ in range(parts.settings.accumulate)]
    samples = sum(targets.shape[0] for _, targets, _ in step)
    for inputs, targets, _ in step:
        share = targets.shape[0] / samples  # (a short batch at an epoch's end weighs less)
        inputs = speed.inputs(inputs.to(parts.device, non_blocking=True))
        targets = targets.to(parts.device, non_blocking=True)
        for regularizer in parts.regularizers:
            inputs, targets = regularizer.mix_batch(inputs, targets, parts.splits.num_classes)
        _, loss = batch_loss(parts, parts.model, inputs, targets)
        speed.scaler.scale(loss * share).backward()
        total += loss.item() * share
    if not math.isfinite(total):
        parts.optimizer.zero_grad(set_to_none=True)
        return total
    speed.scaler.unscale_(parts.optimizer)
    apply_update(parts)
    return total


def _centred_mean(values: list[float], width: int) -> list[float]:
    """Each value's mean with up to ``width // 2`` neighbours on each side (fewer at the
    ends, where the window is cut to stay centred)."""
    half = width // 2
    return [
        float(np.mean(values[i - reach : i + reach + 1]))
        for i in range(len(values))
        for reach in [min(half, i, len(values) - 1 - i)]
    ]


def _suggestions(lrs: list[float], smoothed: list[float]) -> tuple[float, float | None]:
    """The lr of the smallest smoothed loss, and the lr where the smoothed loss falls
    fastest per decade of lr before that minimum (None when it does not fall there). The
    first tenth of the steps is left out, as Lightning's suggestion does: the loss there
    mostly shows how the first batches differ."""
    lowest = int(np.argmin(smoothed))
    start = max(1, len(lrs) // 10)
    if lowest - start < 2:
        return lrs[lowest], None
    window = slice(start, lowest + 1)
    # The minimum itself is no candidate: on a coarse grid its one-sided slope can be the
    # steepest, and a loss still falling at max_lr would then suggest max_lr.
    slopes = np.gradient(np.asarray(smoothed[window]), np.log10(lrs[window]))[:-1]
    steepest = int(np.argmin(slopes))
    return lrs[lowest], (lrs[start + steepest] if slopes[steepest] < 0 else None)
