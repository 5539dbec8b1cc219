"""LR schedules, configured in epochs and stepped once per batch."""

from __future__ import annotations

import math

import pytest
import torch

from trainkit.registry import SCHEDULERS, load_components
from trainkit.schedulers import constant, cosine, step


def make_optimizer(lr: float) -> torch.optim.Optimizer:
    parameter = torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([parameter], lr=lr)


def lrs(optimizer, scheduler, steps: int) -> list[float]:
    """The lr used at each of ``steps`` optimizer steps (then one more, after the last)."""
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    values.append(optimizer.param_groups[0]["lr"])
    return values


@pytest.mark.parametrize(
    ("lr", "min_lr", "steps_per_epoch", "max_epochs"), [(0.1, 0.0, 5, 4), (0.5, 0.01, 3, 7)]
)
def test_cosine_follows_the_closed_form(lr, min_lr, steps_per_epoch, max_epochs):
    optimizer = make_optimizer(lr)
    scheduler = cosine(optimizer, steps_per_epoch, max_epochs, min_lr=min_lr)
    total = steps_per_epoch * max_epochs
    got = lrs(optimizer, scheduler, total)
    expected = [
        min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total + 1)
    ]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert got[0] == lr and got[-1] == pytest.approx(min_lr, abs=1e-12)
    # Changes within an epoch, not only at its end.
    assert got[1] < got[0]


@pytest.mark.parametrize(("step_size", "gamma", "steps_per_epoch"), [(2, 0.1, 3), (1, 0.5, 4)])
def test_step_multiplies_by_gamma_every_step_size_epochs(step_size, gamma, steps_per_epoch):
    optimizer = make_optimizer(0.2)
    scheduler = step(optimizer, steps_per_epoch, step_size=step_size, gamma=gamma)
    total = 4 * step_size * steps_per_epoch
    got = lrs(optimizer, scheduler, total)
    period = step_size * steps_per_epoch
    expected = [0.2 * gamma ** (t // period) for t in range(total + 1)]
    assert got == pytest.approx(expected, rel=1e-9)
    assert got[period - 1] == 0.2 and got[period] == pytest.approx(0.2 * gamma)


def test_constant_keeps_the_lr():
    optimizer = make_optimizer(0.03)
    scheduler = constant(optimizer)
    assert lrs(optimizer, scheduler, 50) == [0.03] * 51


def test_scheduler_state_resumes_exactly():
    optimizer = make_optimizer(0.1)
    scheduler = cosine(optimizer, steps_per_epoch=4, max_epochs=5)
    lrs(optimizer, scheduler, 7)
    state = scheduler.state_dict()
    rest = lrs(optimizer, scheduler, 13)
    resumed_optimizer = make_optimizer(0.1)
    resumed = cosine(resumed_optimizer, steps_per_epoch=4, max_epochs=5)
    resumed.load_state_dict(state)
    resumed_optimizer.param_groups[0]["lr"] = state["_last_lr"][0]
    assert lrs(resumed_optimizer, resumed, 13) == pytest.approx(rest, rel=1e-12)


def test_registry_passes_runtime_objects():
    load_components()
    optimizer = make_optimizer(1.0)
    built = SCHEDULERS.build(
        {"name": "step", "step_size": 2, "gamma": 0.5},
        optimizer=optimizer,
        steps_per_epoch=3,
        max_epochs=10,
    )
    assert isinstance(built, torch.optim.lr_scheduler.StepLR)
    assert built.step_size == 6 and built.gamma == 0.5
    built = SCHEDULERS.build(
        {"name": "cosine"}, optimizer=make_optimizer(1.0), steps_per_epoch=3, max_epochs=10
    )
    assert built.T_max == 30 and built.eta_min == 0.0
    built = SCHEDULERS.build(
        {"name": "constant"}, optimizer=make_optimizer(1.0), steps_per_epoch=3, max_epochs=10
    )
    assert isinstance(built, torch.optim.lr_scheduler.ConstantLR)
