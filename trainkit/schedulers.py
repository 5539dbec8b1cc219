"""Learning-rate schedule builders (torch.optim.lr_scheduler), all stepped once per batch.

Schedules are configured in epochs, the unit people think in, and converted here to
optimizer steps, so the lr changes smoothly within an epoch and resuming mid-epoch is exact.
"""

from __future__ import annotations

from torch.optim import Optimizer, lr_scheduler

from trainkit.registry import SCHEDULERS, NonNegativeFloat, PositiveFloat, PositiveInt


@SCHEDULERS.register("constant")
def constant(optimizer: Optimizer) -> lr_scheduler.LRScheduler:
    """The optimizer's lr throughout."""
    return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


@SCHEDULERS.register("cosine")
def cosine(
    optimizer: Optimizer,
    steps_per_epoch: int,
    max_epochs: int,
    min_lr: NonNegativeFloat = 0.0,
) -> lr_scheduler.LRScheduler:
    """Half a cosine from the optimizer's lr down to ``min_lr`` over the whole run."""
    return lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=steps_per_epoch * max_epochs, eta_min=min_lr
    )


@SCHEDULERS.register("step")
def step(
    optimizer: Optimizer,
    steps_per_epoch: int,
    step_size: PositiveInt = 30,
    gamma: PositiveFloat = 0.1,
) -> lr_scheduler.LRScheduler:
    """Multiply the lr by ``gamma`` every ``step_size`` epochs."""
    return lr_scheduler.StepLR(optimizer, step_size=step_size * steps_per_epoch, gamma=gamma)
