"""Every schedule's lr sequence against its closed form, built from config as the runner does."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from trainkit import paths
from trainkit.errors import UserError
from trainkit.registry import SCHEDULERS, load_components
from trainkit.schedulers import build_schedule

load_components()

LR = 0.1


def make_optimizer(lr: float = LR) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def node(name: str, **overrides) -> dict:
    """The option's YAML defaults with ``overrides``, as the config would give them."""
    yaml = OmegaConf.to_container(OmegaConf.load(paths.config_dir() / "scheduler" / f"{name}.yaml"))
    return {**yaml, **overrides}


def run(config: dict, steps_per_epoch: int, max_epochs: int, metrics=None, lr=LR) -> list[float]:
    """The lr used by every optimizer step of the run, driven like the runner drives it."""
    optimizer = make_optimizer(lr)
    schedule = build_schedule(config, optimizer, steps_per_epoch, max_epochs, "val/loss", "min")
    used = []
    for epoch in range(max_epochs):
        for _ in range(steps_per_epoch):
            used.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch({"val/loss": metrics[epoch] if metrics else 1.0})
    return used


def assert_close(got, expected):
    assert len(got) == len(expected)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"step {step}: {a} != {b}"


def test_every_registered_schedule_has_a_test():
    tested = {"constant", "step", "multistep", "exponential", "cosine", "cosine_restarts",
              "poly", "onecycle", "inverse_sqrt", "plateau"}  # fmt: skip
    assert set(SCHEDULERS.names()) == tested


def test_a_schedule_by_epoch_after_a_fractional_warmup_takes_its_epochs_to_the_last():
    """warmup_epochs=1.5 of 4: cosine over the 2 epochs after epoch 2, the last at half the
    lr (it trained at 0 before)."""
    used = run(node("cosine", interval="epoch", warmup_epochs=1.5), 3, 4)
    assert used[6:9] == pytest.approx([LR] * 3) and used[9:] == pytest.approx([LR / 2] * 3)


def test_constant():
    assert_close(run(node("constant"), 3, 2), [LR] * 6)


@pytest.mark.parametrize("min_lr", [0.0, 0.01])
def test_cosine_per_step(min_lr):
    total = 5 * 4
    expected = [min_lr + (LR - min_lr) * (1 + math.cos(math.pi * t / total)) / 2
                for t in range(total)]  # fmt: skip
    assert_close(run(node("cosine", min_lr=min_lr), 5, 4), expected)


def test_cosine_per_epoch():
    expected = [LR * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4) for _ in range(3)]
    assert_close(run(node("cosine", interval="epoch"), 3, 4), expected)


def test_step_decays_every_step_size_epochs():
    expected = [LR * 0.5 ** (t // (2 * 3)) for t in range(3 * 5)]
    assert_close(run(node("step", step_size=2, gamma=0.5), 3, 5), expected)


@pytest.mark.parametrize(
    ("interval", "epochs", "decays_at"),
    [("step", 30, [20, 40]), ("step", 10, [7, 14]), ("step", 4, [3, 6]), ("step", 3, [2, 4]),
     ("epoch", 5, [4, 8]), ("epoch", 3, [2, 4])],
)  # fmt: skip
def test_step_by_default_decays_twice_within_any_run(interval, epochs, decays_at):
    """A default that acts: step_size null is a third of the run, in the schedule's steps
    (the default used to be 30 epochs, as long as the default run, so it never decayed; then
    a whole number of epochs, so a 4-epoch run decayed once). Two steps an epoch here."""
    expected = [LR * 0.1 ** sum(t >= s for s in decays_at) for t in range(2 * epochs)]
    assert_close(run(node("step", interval=interval), 2, epochs), expected)


@pytest.mark.parametrize(
    ("interval", "epochs", "decays_at"),
    [("step", 20, [30, 45]), ("step", 2, [3, 4]), ("epoch", 3, [3, 6]), ("epoch", 20, [30, 45])],
)
def test_multistep_by_default_decays_at_half_and_three_quarters(interval, epochs, decays_at):
    """In the schedule's steps, rounded down (a 3-epoch run by epoch used to decay once, at
    2). Three steps an epoch here."""
    expected = [LR * 0.1 ** sum(t >= s for s in decays_at) for t in range(3 * epochs)]
    assert_close(run(node("multistep", interval=interval), 3, epochs), expected)


def test_a_schedule_that_never_acts_in_the_run_is_warned_about():
    from trainkit.schedulers import idle_warning

    flat = run(node("step", step_size=30), 2, 30)
    assert "scheduler=step keeps the lr at 0.1 for the whole run" in idle_warning(
        node("step", step_size=30), flat, 30
    )
    assert idle_warning(node("step"), run(node("step"), 2, 30), 30) is None
    assert idle_warning(node("constant"), [0.1] * 10, 5) is None


def test_an_inverse_sqrt_warmup_longer_than_the_run_is_warned_about():
    """Its default warmup of 4000 steps outlasts a default run of 600: the lr never peaks."""
    from trainkit.schedulers import idle_warning

    short = run(node("inverse_sqrt"), 30, 20)
    assert max(short) < LR / 6
    assert idle_warning(node("inverse_sqrt"), short, 20) == (
        "scheduler=inverse_sqrt warms up over scheduler.warmup=4000 steps, and the run has "
        f"600: the lr never reaches optimizer.lr (its peak: {max(short):.3g}); lower "
        "scheduler.warmup"
    )
    fits = node("inverse_sqrt", warmup=100)
    assert idle_warning(fits, run(fits, 30, 20), 20) is None


def test_multistep_decays_at_the_milestones():
    def lr_at(epoch):
        return LR * 0.1 ** sum(epoch >= m for m in (1, 3))

    expected = [lr_at(t // 2) for t in range(2 * 4)]
    assert_close(run(node("multistep", milestones=[1, 3]), 2, 4), expected)


def test_exponential_per_step_reaches_gamma_each_epoch():
    got = run(node("exponential", gamma=0.5), 4, 3)
    assert_close(got, [LR * 0.5 ** (t / 4) for t in range(12)])
    assert_close(run(node("exponential", gamma=0.5, interval="epoch"), 4, 3),
                 [LR * 0.5 ** (t // 4) for t in range(12)])  # fmt: skip


def test_cosine_restarts_restart_and_lengthen():
    # cycles of 1 then 2 epochs at 2 steps per epoch: T_i = 2, 4
    def lr_at(t):
        start, length = (0, 2) if t < 2 else (2, 4)
        return LR * (1 + math.cos(math.pi * (t - start) / length)) / 2

    got = run(node("cosine_restarts", first_cycle_epochs=1, cycle_mult=2), 2, 3)
    assert_close(got, [lr_at(t) for t in range(6)])


def test_poly():
    total = 10
    expected = [LR * (1 - t / total) ** 2 for t in range(total)]
    assert_close(run(node("poly", power=2.0), 5, 2), expected)


def test_onecycle_rises_to_lr_then_falls():
    got = run(node("onecycle"), 10, 2)
    peak = max(got)
    assert peak == pytest.approx(LR, rel=1e-3)
    assert got[0] == pytest.approx(LR / 25)
    assert got.index(peak) == pytest.approx(0.3 * 20, abs=1)
    assert got[-1] < got[0] / 100


@pytest.mark.parametrize("warmup_lr", [0.0, 0.02])
def test_inverse_sqrt_warms_up_linearly_then_decays(warmup_lr):
    warmup = 4
    expected = [
        warmup_lr + (LR - warmup_lr) * n / warmup if n < warmup else LR * math.sqrt(warmup / n)
        for n in range(12)
    ]
    assert_close(run(node("inverse_sqrt", warmup=warmup, warmup_lr=warmup_lr), 3, 4), expected)


def test_plateau_reduces_when_the_monitor_stops_improving():
    losses = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]  # improves once, then flat
    got = run(node("plateau", patience=2, factor=0.5), 1, 6, metrics=losses)
    # Epochs 0 and 1 improve; torch ignores `patience` bad epochs (2, 3) and reduces
    # after the next one (4), so epoch 5 runs at half the lr.
    assert_close(got, [LR, LR, LR, LR, LR, LR * 0.5])


def test_warmup_then_cosine():
    steps_per_epoch, epochs, warmup_steps = 4, 5, 8
    factor = 0.1
    total = steps_per_epoch * epochs - warmup_steps
    expected = [LR * (factor + (1 - factor) * t / warmup_steps) for t in range(warmup_steps)]
    expected += [LR * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    got = run(node("cosine", warmup_epochs=2, warmup_start_factor=factor), steps_per_epoch, epochs)
    assert_close(got, expected)


def test_warmup_before_a_per_epoch_step_schedule():
    got = run(node("step", warmup_epochs=1, step_size=1, gamma=0.5, interval="epoch"), 2, 4)
    assert got[:2] == pytest.approx([LR * 0.01, LR * (0.01 + 0.99 / 2)])
    assert_close(got[2:], [LR, LR, LR * 0.5, LR * 0.5, LR * 0.25, LR * 0.25])


def test_state_dict_resumes_the_same_sequence():
    config = node("cosine", warmup_epochs=1)
    straight = run(config, 3, 4)

    optimizer = make_optimizer()
    schedule = build_schedule(config, optimizer, 3, 4)
    for _ in range(5):
        optimizer.step()
        schedule.step_batch()
    state = (optimizer.state_dict(), schedule.state_dict())
    optimizer2 = make_optimizer()
    schedule2 = build_schedule(config, optimizer2, 3, 4)
    optimizer2.load_state_dict(state[0])
    schedule2.load_state_dict(state[1])
    rest = []
    for _ in range(7):
        rest.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        schedule2.step_batch()
    assert_close(rest, straight[5:])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (node("plateau", interval="step"), "set scheduler.interval=epoch"),
        (node("inverse_sqrt", interval="epoch"), "counts batches"),
        (node("onecycle", interval="epoch"), "steps every batch"),
        (node("cosine", warmup_epochs=4), "leaves no training after warmup"),
        (node("inverse_sqrt", warmup_lr=1.0), "is above optimizer.lr"),
        (node("cosine", interval="sometimes"), "scheduler.interval='sometimes'"),
        (node("exponential", gamma=1.5), "scheduler.gamma=1.5 is out of range"),
    ],
)
def test_mistakes(config, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        build_schedule(config, make_optimizer(), 3, 4)
