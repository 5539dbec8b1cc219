"""Learning-rate schedules (torch.optim.lr_scheduler), with optional linear warmup.

A schedule is configured in epochs, the unit people think in. ``interval`` says how often
it is stepped: every batch (``step``, the default: the lr changes smoothly within an
epoch) or once per epoch (``epoch``). Builders receive ``per_epoch``, the number of
scheduler steps in one epoch, and ``total``, the number of scheduler steps the schedule
spans after warmup, so each one is written once for both intervals.

Warmup (``warmup_epochs`` > 0) ramps the lr linearly from ``warmup_start_factor * lr`` to
``lr`` over that many epochs, one batch at a time, before the chosen schedule starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch
from torch.optim import Optimizer, lr_scheduler

from trainkit.errors import UserError
from trainkit.registry import (
    SCHEDULERS,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Range,
)
from trainkit.settings import split_scheduler_node


class Schedule:
    """The runner's view of a schedule: ``step_batch`` after every optimizer step,
    ``step_epoch`` after every validation; one ``state_dict`` for checkpoints."""

    def __init__(
        self, main, interval: str, warmup=None, warmup_steps: int = 0, monitor=None,
        steps_per_epoch: int = 1,
    ):  # fmt: skip
        self.main, self.interval, self.monitor = main, interval, monitor
        self.warmup, self.warmup_steps = warmup, warmup_steps
        self.batches = 0
        # A schedule by epoch starts after the last epoch with warmup in it (warmup_epochs=1.5:
        # after epoch 2), so that it takes its `total` epochs, down to the run's last.
        self.epoch_steps_from = (math.ceil(warmup_steps / steps_per_epoch) + 1) * steps_per_epoch

    def step_batch(self) -> None:
        self.batches += 1
        if self.batches <= self.warmup_steps:
            self.warmup.step()
        elif self.interval == "step":
            self.main.step()

    def step_epoch(self, metrics: Mapping[str, float]) -> None:
        if self.interval != "epoch" or self.batches < self.epoch_steps_from:
            return
        if isinstance(self.main, lr_scheduler.ReduceLROnPlateau):
            self.main.step(metrics[self.monitor])
        else:
            self.main.step()

    def scale(self, factor: float) -> None:
        """Multiply the lr from now on by ``factor`` (a rollback after divergence)."""
        for scheduler in (self.main, self.warmup):
            for inner in [scheduler, *getattr(scheduler, "_schedulers", [])]:
                if inner is not None and hasattr(inner, "base_lrs"):
                    inner.base_lrs = [lr * factor for lr in inner.base_lrs]
        for group in self.main.optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor

    def state_dict(self) -> dict[str, Any]:
        return {
            "main": self.main.state_dict(),
            "warmup": self.warmup.state_dict() if self.warmup else None,
            "batches": self.batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.main.load_state_dict(state["main"])
        if self.warmup:
            self.warmup.load_state_dict(state["warmup"])
        self.batches = state["batches"]


def build_schedule(
    node: Mapping[str, Any],
    optimizer: Optimizer,
    steps_per_epoch: int,
    max_epochs: int,
    monitor: str = "val/loss",
    monitor_mode: str = "min",
) -> Schedule:
    """Build the ``scheduler`` node's schedule for ``optimizer`` (see the module docstring)."""
    own, settings = split_scheduler_node(node)
    warmup_steps = round(settings.warmup_epochs * steps_per_epoch)
    if warmup_steps >= steps_per_epoch * max_epochs:
        raise UserError(
            f"scheduler.warmup_epochs={settings.warmup_epochs:g} leaves no training after "
            f"warmup (trainer.max_epochs={max_epochs})"
        )
    if settings.interval == "step":
        per_epoch, total = steps_per_epoch, steps_per_epoch * max_epochs - warmup_steps
    else:
        per_epoch, total = 1, max(1, max_epochs - math.ceil(settings.warmup_epochs))
    # The main schedule is made first: it records each group's base lr ("initial_lr").
    main = SCHEDULERS.build(
        own,
        "scheduler",
        optimizer=optimizer,
        per_epoch=per_epoch,
        total=total,
        interval=settings.interval,
        monitor_mode=monitor_mode,
    )
    warmup = None
    if warmup_steps:
        warmup = lr_scheduler.LinearLR(
            optimizer, settings.warmup_start_factor, 1.0, total_iters=warmup_steps
        )
    return Schedule(main, settings.interval, warmup, warmup_steps, monitor, steps_per_epoch)


# --- the schedules -------------------------------------------------------------------------


@SCHEDULERS.register("constant")
def constant(optimizer: Optimizer) -> lr_scheduler.LRScheduler:
    """The optimizer's lr throughout (after any warmup)."""
    return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


@SCHEDULERS.register("step")
def step(
    optimizer: Optimizer,
    per_epoch: int,
    total: int,
    step_size: PositiveInt | None = None,
    gamma: PositiveFloat = 0.1,
) -> lr_scheduler.LRScheduler:
    """Multiply the lr by ``gamma`` every ``step_size`` epochs; null: every third of the run,
    counted in the schedule's steps (two decays within it, whatever ``trainer.max_epochs`` is;
    by epoch, one in a run of 2 or 4 epochs)."""
    size = step_size * per_epoch if step_size else max(1, math.ceil(total / 3))
    return lr_scheduler.StepLR(optimizer, step_size=size, gamma=gamma)


@SCHEDULERS.register("multistep")
def multistep(
    optimizer: Optimizer,
    per_epoch: int,
    total: int,
    milestones: list[PositiveInt] | None = None,
    gamma: PositiveFloat = 0.1,
) -> lr_scheduler.LRScheduler:
    """Multiply the lr by ``gamma`` at each of the ``milestones`` (epochs); null: at half
    and three quarters of the run, counted in the schedule's steps."""
    if milestones:
        steps = [m * per_epoch for m in milestones]
    else:  # (floor: a 3-epoch run by epoch decays at 1 and 2, not twice at 2)
        steps = sorted({max(1, math.floor(total * f)) for f in (0.5, 0.75)})
    return lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=gamma)


@SCHEDULERS.register("exponential")
def exponential(
    optimizer: Optimizer, per_epoch: int, gamma: Annotated[float, Range(gt=0, le=1)] = 0.95
) -> lr_scheduler.LRScheduler:
    """Multiply the lr by ``gamma`` every epoch (by gamma^(1/steps) every step)."""
    return lr_scheduler.ExponentialLR(optimizer, gamma=gamma ** (1 / per_epoch))


@SCHEDULERS.register("cosine")
def cosine(
    optimizer: Optimizer, total: int, min_lr: NonNegativeFloat = 0.0
) -> lr_scheduler.LRScheduler:
    """Half a cosine from the optimizer's lr down to ``min_lr`` over the whole run."""
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=min_lr)


@SCHEDULERS.register("cosine_restarts")
def cosine_restarts(
    optimizer: Optimizer,
    per_epoch: int,
    first_cycle_epochs: PositiveInt = 10,
    cycle_mult: PositiveInt = 2,
    min_lr: NonNegativeFloat = 0.0,
) -> lr_scheduler.LRScheduler:
    """SGDR (Loshchilov & Hutter 2017): cosine cycles, each ``cycle_mult`` times longer."""
    return lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=first_cycle_epochs * per_epoch, T_mult=cycle_mult, eta_min=min_lr
    )


@SCHEDULERS.register("poly")
def poly(optimizer: Optimizer, total: int, power: PositiveFloat = 0.9) -> lr_scheduler.LRScheduler:
    """lr * (1 - t / total) ** power: polynomial decay to zero at the end of the run."""
    return lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=power)


@SCHEDULERS.register("onecycle")
def onecycle(
    optimizer: Optimizer,
    total: int,
    interval: str,
    pct_start: Annotated[float, Range(gt=0, lt=1)] = 0.3,
    div_factor: PositiveFloat = 25.0,
    final_div_factor: PositiveFloat = 1e4,
) -> lr_scheduler.LRScheduler:
    """1cycle (Smith 2018): up to the optimizer's lr, then down far below it; per batch."""
    if interval != "step":
        raise UserError("scheduler=onecycle steps every batch; remove scheduler.interval=epoch")
    max_lrs = [group["lr"] for group in optimizer.param_groups]
    return lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lrs,
        total_steps=total,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=False,
    )


class _InverseSqrt:
    """Linear warmup from ``warmup_lr`` to lr over ``warmup`` steps, then lr * sqrt(warmup / n).

    A factor on the base lr, as LambdaLR wants; an object (not a lambda) so that its
    settings travel in the scheduler's state_dict.
    """

    def __init__(self, warmup: int, start_factor: float):
        self.warmup, self.start_factor = warmup, start_factor

    def __call__(self, n: int) -> float:
        if n < self.warmup:
            return self.start_factor + (1 - self.start_factor) * n / self.warmup
        return math.sqrt(self.warmup / max(n, 1))


@SCHEDULERS.register("inverse_sqrt")
def inverse_sqrt(
    optimizer: Optimizer,
    interval: str,
    warmup: PositiveInt = 4000,
    warmup_lr: NonNegativeFloat = 0.0,
) -> lr_scheduler.LRScheduler:
    """The Transformer schedule (Vaswani et al. 2017): warmup over ``warmup`` steps, then
    decay with the inverse square root of the step."""
    if interval != "step":
        raise UserError("scheduler=inverse_sqrt counts batches; remove scheduler.interval=epoch")
    lr = optimizer.param_groups[0]["lr"]
    if warmup_lr > lr:
        raise UserError(f"scheduler.warmup_lr={warmup_lr:g} is above optimizer.lr={lr:g}")
    return lr_scheduler.LambdaLR(optimizer, _InverseSqrt(warmup, warmup_lr / lr))


@SCHEDULERS.register("plateau")
def plateau(
    optimizer: Optimizer,
    interval: str,
    monitor_mode: str,
    factor: Annotated[float, Range(gt=0, lt=1)] = 0.1,
    patience: PositiveInt = 10,
    threshold: Annotated[float, Range(ge=0, lt=1)] = 1e-4,
    min_lr: NonNegativeFloat = 0.0,
) -> lr_scheduler.ReduceLROnPlateau:
    """Multiply the lr by ``factor`` when trainer.monitor has not improved for ``patience``
    epochs; the direction (min or max) is the monitored metric's."""
    if interval != "epoch":
        raise UserError("scheduler=plateau reacts to validation; set scheduler.interval=epoch")
    return lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=monitor_mode,
        factor=factor,
        patience=patience,
        threshold=threshold,
        min_lr=min_lr,
    )


# --- previewing a schedule -----------------------------------------------------------------


def idle_warning(node: Mapping[str, Any], lrs: list[float], max_epochs: int) -> str | None:
    """A warning when the planned curve ``lrs`` shows settings that do not act within the
    run: a flat curve from a schedule meant to change the lr (step_size=30 in a 30-epoch
    run), or inverse_sqrt's warmup longer than the run (the lr never reaches its peak)."""
    warmup = node.get("warmup", 0) if node["name"] == "inverse_sqrt" else 0
    if warmup >= len(lrs) > 1:
        return (
            f"scheduler=inverse_sqrt warms up over scheduler.warmup={warmup} steps, and the run "
            f"has {len(lrs)}: the lr never reaches optimizer.lr (its peak: {max(lrs):.3g}); "
            "lower scheduler.warmup"
        )
    if len(lrs) < 2 or max(lrs) != min(lrs) or node["name"] in ("constant", "plateau"):
        return None  # (a run of one step has no schedule to speak of)
    return (
        f"scheduler={node['name']} keeps the lr at {lrs[0]:.3g} for the whole run "
        f"(trainer.max_epochs={max_epochs}): its settings never act within it; check them "
        "with trainkit lr-plot"
    )


def lr_curve(
    node: Mapping[str, Any],
    optimizer: Optimizer,
    steps_per_epoch: int,
    max_epochs: int,
    monitor: str = "val/loss",
    monitor_mode: str = "min",
) -> list[float]:
    """The lr of param group 0 at every optimizer step of the run (steps_per_epoch * max_epochs).

    ``optimizer`` is only read, and must not have a schedule yet (its lrs are the configured
    ones): the schedule drives a throwaway SGD with one dummy parameter per param group,
    holding a copy of each group's ``lr``, stepped exactly as the runner steps it.
    Validation is not run: the monitored metric is taken to improve every epoch, so
    ``plateau`` never reduces the lr and its curve is flat (a constant metric would not do:
    plateau counts it as no improvement). Raises UserError for a bad ``node``, as
    ``build_schedule`` does.
    """
    if any("initial_lr" in group for group in optimizer.param_groups):
        raise ValueError("lr_curve needs an optimizer that no schedule has changed yet")
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": group["lr"]}
        for group in optimizer.param_groups
    ]
    stand_in = torch.optim.SGD(groups, lr=optimizer.param_groups[0]["lr"])
    schedule = build_schedule(
        node, stand_in, steps_per_epoch, max_epochs, monitor=monitor, monitor_mode=monitor_mode
    )
    lrs = []
    # Once, for torch's check that the optimizer steps before its schedule; a step of an
    # optimizer without gradients changes nothing, and would cost two thirds of the time.
    stand_in.step()
    group = stand_in.param_groups[0]
    for epoch in range(max_epochs):
        for _ in range(steps_per_epoch):
            lrs.append(float(group["lr"]))
            schedule.step_batch()
        schedule.step_epoch({monitor: _improving_metric(epoch, monitor_mode)})
    return lrs


def _improving_metric(epoch: int, monitor_mode: str) -> float:
    # Better than the last epoch's by any relative threshold in [0, 1), in either direction
    # (a min-mode threshold of 1 or more is one that nothing can meet).
    return -float(epoch) if monitor_mode == "min" else -1.0 / (epoch + 1)
