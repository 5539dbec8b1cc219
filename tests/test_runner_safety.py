"""What the runner does when training goes wrong: signals, and losses that are not finite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import run_dirs
from trainkit import checkpoint, config
from trainkit.errors import UserError
from trainkit.runner import Runner, stop_on_signals

SMALL = [
    "data=synthetic",
    "data.num_samples=400",
    "model=mlp",
    "model.hidden=[32]",
    "logger.tensorboard=false",
    "logger.progress_bar=false",
    "trainer.max_epochs=3",
]


def make_runner(run_dir, *overrides):
    return Runner(config.compose(config.prepare([*SMALL, *overrides])), run_dir)


def nan_once_at(runner, step: int):
    """Make the loss NaN at one optimizer step only (a transient blow-up)."""
    real = runner.task.compute_loss
    fired = []

    def compute_loss(loss_fn, outputs, targets):
        loss = real(loss_fn, outputs, targets)
        if runner.step == step and runner.model.training and not fired:
            fired.append(True)
            return loss * float("nan")
        return loss

    runner.task.compute_loss = compute_loss
    return fired


# --- non-finite losses -----------------------------------------------------------------------


def test_by_default_divergence_stops_with_where_and_the_lr(tmp_path):
    runner = make_runner(tmp_path / "run", "optimizer.lr=1e12")
    with pytest.raises(UserError) as error:
        runner.fit()
    message = str(error.value)
    assert message.startswith("training diverged: ")
    assert "at epoch 1 after step" in message and "(lr " in message
    assert "set trainer.nonfinite=skip or rollback" in message


def test_skip_drops_the_bad_update_and_goes_on(tmp_path):
    runner = make_runner(tmp_path / "run", "trainer.nonfinite=skip")
    fired = nan_once_at(runner, 4)
    summary = runner.fit()
    assert fired and runner.skipped_steps == 1
    assert summary["steps"] == 3 * 5 - 1  # one update of 15 skipped
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


def test_skip_stops_after_its_limit(tmp_path):
    runner = make_runner(
        tmp_path / "run",
        "trainer.nonfinite=skip",
        "trainer.nonfinite_max_skips=2",
        "optimizer.lr=1e12",
    )
    with pytest.raises(UserError) as error:
        runner.fit()
    message = str(error.value)
    assert message.startswith(
        "training diverged: 3 non-finite updates, more than trainer.nonfinite_max_skips=2 at "
    )
    assert message.endswith("add regularization=[grad_clip], or set trainer.nonfinite=rollback")


def test_rollback_reloads_the_last_checkpoint_with_a_lower_lr(tmp_path):
    runner = make_runner(
        tmp_path / "run", "trainer.nonfinite=rollback", "trainer.checkpoint_every=2"
    )
    fired = nan_once_at(runner, 5)
    planned_lr_at_step_5 = runner.planned_lrs[5]
    summary = runner.fit()
    assert fired and runner.rollbacks == 1 and runner.lr_scale == 0.5
    assert summary["steps"] == 3 * 5  # the steps after the checkpoint were done again
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["lr_scale"] == 0.5
    assert runner.planned_lrs[5] == planned_lr_at_step_5


def test_rollbacks_are_bounded(tmp_path):
    runner = make_runner(
        tmp_path / "run",
        "trainer.nonfinite=rollback",
        "trainer.nonfinite_max_rollbacks=2",
        "optimizer.lr=1e12",
    )
    with pytest.raises(UserError) as error:
        runner.fit()
    message = str(error.value)
    assert message.startswith(
        "training diverged after 2 rollbacks (trainer.nonfinite_max_rollbacks=2): "
    )
    assert "trainer.nonfinite=" not in message.split(")", 1)[1]  # not what is set already
    assert runner.rollbacks == 2


# --- signals ---------------------------------------------------------------------------------


class FakeRunner:
    stop_signal = None


def test_a_first_signal_asks_to_stop_and_a_second_sigint_stops_at_once():
    runner = FakeRunner()
    # Whatever was there before (Python's handler, or SIG_IGN under nohup or `&`) comes back.
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop_on_signals(runner):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert runner.stop_signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, signal_number):
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trainkit", "train", *SMALL, "trainer.max_epochs=100000"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.rglob("last.pt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal_number
    (run_dir,) = run_dirs(tmp_path)
    assert stderr.strip().splitlines()[-1] == f"resume with: trainkit train resume={run_dir}"
    # Ctrl-C again stops at once; SIGTERM again only asks again, so it is not offered then.
    assert "stopping after this step and saving a checkpoint" in stdout, stdout
    assert ("Ctrl-C again" in stdout) == (signal_number == signal.SIGINT), stdout
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["step"] >= 1
