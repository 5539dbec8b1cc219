"""`trainkit lr-find`: the range test's lrs and losses, its suggestion, and the verb."""

from __future__ import annotations

import json
import math
import multiprocessing
import re

import numpy as np
import pytest
import torch

from tests.conftest import run_dirs, run_trainkit
from trainkit import config
from trainkit.build import build
from trainkit.lr_find import _centred_mean, _step, _suggestions, find_lr

SMALL = ["data=synthetic", "data.num_samples=300", "model=mlp", "model.hidden=[16]"]


def compose(*overrides: str):
    return config.resolve(config.compose(config.prepare(list(overrides))))


def geometric(low: float, high: float, steps: int) -> list[float]:
    return list(np.geomspace(low, high, steps))


def test_the_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = geometric(1e-6, 10, 101)
    x = np.log10(lrs)
    # Falls fastest at lr 1e-3 (the tanh's middle), lowest near 0.3, then climbs.
    loss = 2 - np.tanh(2 * (x + 3)) + 5 * np.maximum(0, x + 0.5) ** 2
    minimum, steepest = _suggestions(lrs, list(loss))
    assert steepest == pytest.approx(1e-3, rel=0.13)  # one step of the grid is x1.12
    assert 0.1 < minimum < 1


def test_a_loss_still_falling_at_max_lr_never_suggests_max_lr():
    """Five steps a decade and more apart: the last step's one-sided slope is the steepest,
    but the lr at the end of the range is where the test stopped looking, not a choice."""
    lrs = geometric(1e-7, 10, 5)
    minimum, steepest = _suggestions(lrs, [2.30, 2.29, 2.20, 1.60, 0.20])
    assert minimum == lrs[-1]
    assert steepest == lrs[3]


def test_a_curve_that_never_falls_has_no_steepest_point():
    lrs = geometric(1e-6, 10, 50)
    minimum, steepest = _suggestions(lrs, [1.0 + 0.1 * i for i in range(50)])
    assert steepest is None and minimum == lrs[0]


def test_the_centred_mean_has_no_lag():
    line = [float(i) for i in range(40)]
    assert _centred_mean(line, 9) == pytest.approx(line)  # a running average would trail
    noisy = [1.0, 5.0] * 20
    assert _centred_mean(noisy, 9)[20] == pytest.approx(np.mean(noisy[16:25]))


def test_a_range_test_wraps_around_a_small_data_set_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 3 batches an epoch, 2 a step: 30 steps take 20 epochs of it.
    cfg = compose(*SMALL, "trainer.limit_train_batches=3", "trainer.accumulate=2")
    test, parts = find_lr(cfg, 1e-5, 1.0, 30)
    assert len(test.lrs) == len(test.losses) == len(test.smoothed) >= 10
    assert test.lrs[0] == pytest.approx(1e-5)
    ratios = np.diff(np.log(test.lrs))
    assert np.all(ratios > 0) and np.allclose(ratios, math.log(1e5) / 29)  # exponential
    if not test.stopped:
        assert test.lrs[-1] == pytest.approx(1.0)
    assert 1e-5 <= test.suggestion <= 1.0
    assert list(tmp_path.iterdir()) == []  # no run directory, no file


def test_a_range_test_stops_its_loaders_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(multiprocessing.active_children())
    find_lr(compose(*SMALL, "data.num_workers=2"), 1e-5, 1.0, 10)
    assert set(multiprocessing.active_children()) <= before


def test_an_accumulated_step_with_a_short_batch_is_one_batch_of_its_samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A step of 32 + 8 samples (an epoch's short last batch) against one batch of the 40.
    accumulated, whole = (
        build(compose(*SMALL, f"trainer.accumulate={k}"), "find_lr") for k in (2, 1)
    )
    inputs, targets, index = (t[:40] for t in next(iter(whole.loaders["train"])))
    parts = [(inputs[:32], targets[:32], index[:32]), (inputs[32:], targets[32:], index[32:])]
    loss = _step(accumulated, iter(parts))
    assert loss == pytest.approx(_step(whole, iter([(inputs, targets, index)])), rel=1e-6)
    for a, b in zip(accumulated.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_every_param_group_keeps_its_ratio_to_the_lr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose(*SMALL, "model.hidden=[16,16]", "optimizer.layer_decay=0.5")
    built = [group["lr"] for group in build(cfg, "plan").optimizer.param_groups]
    assert len(set(built)) > 1  # layer decay: the groups differ
    test, parts = find_lr(cfg, 1e-4, 1e-3, 5)
    now = [group["lr"] for group in parts.optimizer.param_groups]
    assert np.allclose(np.array(now) / test.lrs[-1], np.array(built) / cfg.optimizer.lr)


@pytest.mark.slow
def test_the_suggested_lr_trains_where_max_lr_does_not(tmp_path):
    result = run_trainkit("lr-find", "steps=40", "max_lr=10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (suggested,) = re.findall(r"suggested: optimizer\.lr=(\S+)", result.stdout)
    assert 1e-7 < float(suggested) < 10
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_find.png"]  # no run directory

    def short_run(lr: str):
        folder = tmp_path / f"lr_{lr}"
        folder.mkdir()
        args = ("train", f"optimizer.lr={lr}", "trainer.max_epochs=2", "logger.progress_bar=false")
        done = run_trainkit(*args, cwd=folder)
        if done.returncode != 0:  # diverged: stopped with the non-finite loss
            assert "not finite" in done.stderr or "nan" in done.stderr.lower(), done.stderr
            return 0.0
        (run_dir,) = run_dirs(folder)
        return json.loads((run_dir / "summary.json").read_text())["val/acc"]

    at_suggestion = short_run(suggested)
    assert at_suggestion > 0.8
    assert at_suggestion > short_run("10")


def test_a_negative_loss_that_keeps_falling_is_not_divergence(tmp_path, monkeypatch):
    # Poisson NLL (log input) goes below 0: "4x its best" must not read -1 > -4 as diverged.
    import trainkit.lr_find as lr_find

    losses = iter(-1.0 - 0.01 * step for step in range(1000))
    monkeypatch.setattr(lr_find, "_step", lambda parts, batches: next(losses))
    monkeypatch.chdir(tmp_path)
    test, _ = find_lr(compose(*SMALL), 1e-4, 1.0, 20)
    assert not test.stopped and len(test.lrs) == 20
