"""Resuming: a run stopped at any point and resumed ends exactly where it would have."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import run_dirs, run_trainkit
from trainkit import checkpoint, config
from trainkit.errors import UserError
from trainkit.runner import Runner

# Dropout and augmentation draw random numbers every step: resuming must restore them too.
RUN = [
    "data=synthetic",
    "data.num_samples=400",
    "model=mlp",
    "model.hidden=[32]",
    "model.dropout=0.2",
    "augmentation=digits",
    "trainer.deterministic=true",
    "trainer.checkpoint_every=4",
    "logger.progress_bar=false",
]


def make_runner(run_dir, *overrides):
    return Runner(config.compose(config.prepare([*RUN, *overrides])), run_dir)


def final_weights(run_dir):
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def epochs_logged(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("epoch_time_s")
    return records


class Crash(Exception):
    pass


def crash_at_step(runner, step: int, monkeypatch) -> None:
    """Fit ``runner`` until its optimizer step ``step``, then crash as a killed run would
    (after that step, before any checkpoint of it)."""
    real_step = Runner._optimizer_step

    def step_then_crash(self, *args):
        stepped = real_step(self, *args)
        if self.step == step:
            raise Crash
        return stepped

    monkeypatch.setattr(Runner, "_optimizer_step", step_then_crash)
    with pytest.raises(Crash):
        runner.fit()
    monkeypatch.undo()


# On the device, batches are cut and augmented (crops and flips only) by trainkit itself.
ON_DEVICE = ["data.on_device=true", "augmentation=basic"]


@pytest.mark.parametrize("loader", [[], ON_DEVICE], ids=["dataloader", "on_device"])
def test_a_run_crashed_within_an_epoch_resumes_bitwise(loader, tmp_path, monkeypatch):
    straight = make_runner(tmp_path / "straight", "trainer.max_epochs=3", *loader)
    straight.fit()

    crashing = make_runner(tmp_path / "crashed", "trainer.max_epochs=3", *loader)
    # Mid-epoch 2 (5 steps an epoch), after the checkpoint at step 8.
    crash_at_step(crashing, 10, monkeypatch)
    saved = checkpoint.load(tmp_path / "crashed" / "checkpoints" / "last.pt")
    assert saved["step"] == 8 and saved["epoch_progress"]["batches"] == 3

    resumed = make_runner(
        tmp_path / "crashed", "trainer.max_epochs=3", *loader, f"resume={tmp_path / 'crashed'}"
    )
    assert (resumed.epoch, resumed.step) == (1, 8)
    resumed.fit()
    assert_bitwise_equal(final_weights(tmp_path / "straight"), final_weights(tmp_path / "crashed"))
    assert epochs_logged(tmp_path / "crashed") == epochs_logged(tmp_path / "straight")


class OnTheGpu:
    """A tensor as ``torch.load(map_location="cuda")`` gives it: no generator takes it, and
    ``.cpu()`` gives the host copy (a CPU machine's stand-in for a GPU tensor)."""

    def __init__(self, tensor):
        self.host = tensor

    def cpu(self):
        return self.host


def test_generator_states_loaded_onto_the_runs_gpu_are_restored_from_host_copies(
    tmp_path, monkeypatch
):
    # A resume loads its checkpoint onto the run's device; on a GPU the generators' states
    # came back as CUDA tensors, which numpy and torch's generators refuse (found on an H200).
    straight = make_runner(tmp_path / "straight", "trainer.max_epochs=2")
    straight.fit()
    crash_at_step(make_runner(tmp_path / "crashed", "trainer.max_epochs=2"), 6, monkeypatch)
    real_load = checkpoint.load

    def load_onto_the_gpu(path, map_location="cpu"):
        state = real_load(path, map_location)
        rng = state["rng"]
        kind, keys, *rest = rng["numpy"]
        rng["numpy"] = (kind, OnTheGpu(keys), *rest)
        rng["torch"] = OnTheGpu(rng["torch"])
        state["train_generator"] = OnTheGpu(state["train_generator"])
        return state

    monkeypatch.setattr(checkpoint, "load", load_onto_the_gpu)
    resumed = make_runner(
        tmp_path / "crashed", "trainer.max_epochs=2", f"resume={tmp_path / 'crashed'}"
    )
    monkeypatch.undo()
    resumed.fit()
    assert_bitwise_equal(final_weights(tmp_path / "straight"), final_weights(tmp_path / "crashed"))


@pytest.mark.gpu
@pytest.mark.parametrize("loader", [[], ON_DEVICE], ids=["dataloader", "on_device"])
def test_on_a_gpu_a_run_crashed_within_an_epoch_resumes_bitwise(loader, tmp_path, monkeypatch):
    on_gpu = ["trainer.device=cuda", "trainer.precision=bf16", "trainer.max_epochs=3", *loader]
    straight = make_runner(tmp_path / "straight", *on_gpu)
    straight.fit()
    crashing = make_runner(tmp_path / "crashed", *on_gpu)
    crash_at_step(crashing, 10, monkeypatch)
    resumed = make_runner(tmp_path / "crashed", *on_gpu, f"resume={tmp_path / 'crashed'}")
    assert (resumed.epoch, resumed.step) == (1, 8)
    resumed.fit()
    assert_bitwise_equal(final_weights(tmp_path / "straight"), final_weights(tmp_path / "crashed"))


def test_a_users_file_at_predictions_csv_is_left_and_the_predictions_go_beside_it(
    tmp_path, monkeypatch, caplog
):
    crashing = make_runner(tmp_path / "run", "trainer.max_epochs=2")
    crash_at_step(crashing, 6, monkeypatch)
    notes = tmp_path / "run" / "predictions.csv"
    notes.write_text("my notes")
    resumed = make_runner(tmp_path / "run", "trainer.max_epochs=2", f"resume={tmp_path / 'run'}")
    resumed.fit()
    assert notes.read_text() == "my notes"
    assert (tmp_path / "run" / "predictions-2.csv").read_text().startswith("index,target,")
    assert "predictions.csv was in the run's directory before the run wrote it" in caplog.text


def test_resuming_refuses_a_config_that_trains_differently():
    saved = {"optimizer": {"lr": 0.1}, "trainer": {"device": "cpu"}, "logger": {"x": 1}}
    current = {"optimizer": {"lr": 0.3}, "trainer": {"device": "cuda"}, "logger": {"x": 2}}
    with pytest.raises(UserError) as error:
        from trainkit.checkpoint import check_resumable

        check_resumable(saved, current)
    message = str(error.value)
    assert message.startswith(
        "resume: the config differs from the run's (optimizer.lr: 0.1 -> 0.3)"
    )
    assert "trainer.device" not in message.split(";")[0]  # safe to change: not in the diff


def test_a_checkpoint_of_another_model_is_one_line(tmp_path):
    make_runner(tmp_path / "run", "trainer.max_epochs=1").fit()
    with pytest.raises(UserError, match="differs from the run's .*model.hidden"):
        make_runner(tmp_path / "other", "model.hidden=[8]", f"resume={tmp_path / 'run'}")


@pytest.mark.slow
def test_a_run_killed_with_sigkill_and_resumed_ends_with_the_same_weights(tmp_path):
    # The lr of every step goes to TensorBoard: each must appear exactly once after resuming.
    args = ["train", *RUN, "trainer.max_epochs=12", "logger.log_every_n_steps=1"]
    straight = tmp_path / "straight"
    straight.mkdir()
    assert run_trainkit(*args, cwd=straight).returncode == 0
    (straight_dir,) = run_dirs(straight)

    killed = tmp_path / "killed"
    killed.mkdir()
    env = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-m", "trainkit", *args],
        cwd=killed,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(killed.rglob("last.pt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(0).uniform(0.0, 0.5))  # somewhere in the run: mid-step, mid-save
    process.send_signal(signal.SIGKILL)
    process.wait()
    (run_dir,) = run_dirs(killed)
    if process.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert not (run_dir / "summary.json").exists()

    result = run_trainkit("train", f"resume={run_dir}", cwd=killed)
    assert result.returncode == 0, result.stderr
    assert run_dirs(killed) == [run_dir]  # continued in the same directory
    assert_bitwise_equal(final_weights(straight_dir), final_weights(run_dir))
    assert epochs_logged(run_dir) == epochs_logged(straight_dir)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/lr")]
    assert sorted(steps) == list(range(1, 12 * 5 + 1))  # every step once, none twice


def test_resume_mistakes_are_one_line(tmp_path):
    result = run_trainkit("train", "resume=nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "trainkit: error: resume=nowhere does not exist"
    result = run_trainkit("train", *RUN, "trainer.max_epochs=1", cwd=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    (run_dir / "summary.json").unlink()  # as if it had been stopped after its checkpoint
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = run_trainkit("train", f"resume={run_dir}", "optimizer.lr=0.5", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("trainkit: error: resume: the config differs from the run's")
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # nothing of the run is touched, .hydra/ included
    # ... so the plain resume command still works afterwards.
    result = run_trainkit("train", f"resume={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "summary.json").is_file()
