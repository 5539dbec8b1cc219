"""The Runner in-process: its state is one object, and restoring it continues exactly."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest
import torch

from tests.conftest import run_trainkit
from trainkit import checkpoint, config
from trainkit.runner import Runner

SMALL = [
    "data=synthetic",
    "model=mlp",
    "model.hidden=[32]",
    "augmentation=none",
    "logger.tensorboard=false",
    "logger.progress_bar=false",
    "trainer.max_epochs=3",
]


def make_runner(run_dir, *overrides):
    return Runner(config.compose(config.prepare([*SMALL, *overrides])), run_dir)


def weights(runner):
    return {k: v.clone() for k, v in runner.model.state_dict().items()}


def test_restored_state_continues_bitwise(tmp_path):
    straight = make_runner(tmp_path / "straight")
    for _ in range(2):
        straight.train_epoch()
        straight.epoch += 1

    interrupted = make_runner(tmp_path / "interrupted")
    interrupted.train_epoch()
    interrupted.epoch += 1
    checkpoint.save(interrupted.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it

    resumed = make_runner(tmp_path / "resumed")
    resumed.load_state_dict(checkpoint.load(tmp_path / "state.pt"))
    assert (resumed.epoch, resumed.step) == (interrupted.epoch, interrupted.step)
    resumed.train_epoch()
    for name, value in weights(straight).items():
        assert torch.equal(value, weights(resumed)[name]), name
    assert resumed.lr == straight.lr


@pytest.mark.parametrize("eval_batch", [7, 64])
def test_a_splits_class_weighted_loss_is_the_weighted_mean_whatever_the_batches(
    tmp_path, eval_batch
):
    """torch's class-weighted cross-entropy divides by the batch's weights, not its size: a
    split's loss weighs each batch by them (by its size it changed with the batch size)."""
    from trainkit.runner import evaluate

    weights_ = ",".join(["1"] * 9 + ["20"])
    runner = make_runner(tmp_path, f"loss.class_weights=[{weights_}]",
                         f"data.eval_batch_size={eval_batch}")  # fmt: skip
    loader = runner.loaders["test"]
    values, _ = evaluate(runner.model, loader, runner.loss_fn, runner.task,
                         runner.task.metrics(), runner.device, "test")  # fmt: skip
    inputs, targets = (torch.cat(parts) for parts in list(zip(*loader, strict=True))[:2])
    assert len(targets) % eval_batch  # a short last batch
    with torch.no_grad():
        whole = runner.loss_fn(runner.model.eval()(inputs), targets).item()
    assert values["test/loss"] == pytest.approx(whole, rel=1e-5)


def test_fit_writes_best_and_last_and_tests_the_best(tmp_path):
    runner = make_runner(tmp_path / "run")
    summary = runner.fit()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    best = max(records, key=lambda r: r["val/acc"])  # first of equals, as the runner keeps it
    assert summary["best_epoch"] == best["epoch"]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3
    assert summary["test/acc"] > 0.5


def test_monitoring_a_loss_keeps_the_lowest(tmp_path):
    runner = make_runner(tmp_path / "run", "trainer.monitor=val/loss")
    assert runner.mode == "min"
    summary = runner.fit()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert summary["best_epoch"] == min(records, key=lambda r: r["val/loss"])["epoch"]


def test_early_stopping_ends_the_run(tmp_path):
    runner = make_runner(
        tmp_path / "run",
        "regularization=[early_stopping]",
        "regularization.early_stopping.patience=1",
        "regularization.early_stopping.min_delta=10",
        "trainer.max_epochs=20",
    )
    summary = runner.fit()
    assert summary["epochs"] == 2  # the first validation sets the best; nothing beats it by 10


def test_the_default_monitor_must_exist(tmp_path):
    from trainkit.errors import UserError

    with pytest.raises(UserError, match="not a logged metric"):
        make_runner(tmp_path / "run", "trainer.monitor=val/acc_top5", "data.num_classes=3")


def test_ema_is_validated_checkpointed_and_evaluated(tmp_path):
    from trainkit.evaluation import evaluate_checkpoint

    runner = make_runner(tmp_path / "run", "regularization=[ema]", "regularization.ema.decay=0.9")
    summary = runner.fit()
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["regularizers"][0]["averaged"] is not None
    differs = [
        not torch.equal(best["model"][k], best["evaluation_model"][k])
        for k in best["model"]
        if best["model"][k].is_floating_point()
    ]
    assert any(differs)  # validation and test saw the average, not the raw weights
    (tmp_path / "eval").mkdir()
    evaluated = evaluate_checkpoint(tmp_path / "run", [], tmp_path / "eval", plugins=[])
    assert evaluated["test/acc"] == pytest.approx(summary["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(summary["test/loss"], abs=1e-6)


@pytest.mark.parametrize(
    "schedule",
    [
        ["scheduler=onecycle"],
        ["scheduler=inverse_sqrt", "scheduler.warmup=5", "scheduler.warmup_lr=0.01"],
        ["scheduler=cosine", "scheduler.warmup_epochs=1"],
        ["scheduler=step", "scheduler.step_size=1", "scheduler.interval=epoch"],
    ],
    ids=["onecycle", "inverse_sqrt", "warmup_cosine", "step_per_epoch"],
)
def test_the_planned_lr_curve_is_the_one_the_run_uses(schedule, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runner = make_runner(
        tmp_path / "run", "logger.tensorboard=true", "logger.log_every_n_steps=1", *schedule
    )
    runner.fit()
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    planned = {e.step: e.value for e in events.Scalars("train/lr_planned")}
    used = {e.step: e.value for e in events.Scalars("train/lr")}
    assert len(used) == runner.step and planned.keys() == used.keys()
    for step, lr in used.items():
        assert planned[step] == pytest.approx(lr, rel=1e-6), step


# --- debug presets ---------------------------------------------------------------------------


def count_rows(path) -> int:
    return len(path.read_text().splitlines()) - 1  # minus the header


def make_debug_runner(run_dir, *overrides):
    """Without SMALL's max_epochs: the command line would win over the preset's."""
    small = [o for o in SMALL if not o.startswith("trainer.max_epochs")]
    return Runner(config.compose(config.prepare([*small, *overrides])), run_dir)


def test_debug_fast_runs_one_batch_of_each_split(tmp_path):
    runner = make_debug_runner(tmp_path / "run", "debug=fast", "data.eval_batch_size=16")
    summary = runner.fit()
    assert summary["epochs"] == 1 and summary["steps"] == 1
    assert count_rows(tmp_path / "run" / "predictions.csv") == 16  # one test batch


def test_debug_limit_caps_the_batches_of_every_epoch_and_the_schedule_knows(tmp_path):
    runner = make_debug_runner(tmp_path / "run", "debug=limit", "data.batch_size=8")
    assert runner.train_batches == 10 < len(runner.loaders["train"])
    assert len(runner.planned_lrs) == 3 * 10  # the schedule spans the limited epochs
    summary = runner.fit()
    assert summary["epochs"] == 3 and summary["steps"] == 30


def test_debug_overfit_memorizes_a_few_batches(tmp_path):
    runner = make_debug_runner(
        tmp_path / "run", "debug=overfit", "optimizer=adam", "optimizer.lr=0.01", "data.noise=3"
    )
    assert len(runner.splits.train) == len(runner.splits.val) == 4 * 64
    runner.fit()
    assert runner.best_record["val/acc"] == 1.0
    assert runner.best_record["val/loss"] < 0.05


# --- which checkpoints stay ------------------------------------------------------------------


def test_keep_last_and_keep_best_keep_that_many_files(tmp_path):
    runner = make_runner(
        tmp_path / "run",
        "trainer.max_epochs=5",
        "trainer.keep_last=2",
        "trainer.keep_best=3",
        "trainer.checkpoint_every=3",
        "trainer.monitor=val/loss",
    )
    runner.fit()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))
    history = [n for n in names if n.startswith(("epoch_", "step_"))]
    assert history == ["epoch_0005.pt", "step_0000033.pt"]  # the newest two (7 steps an epoch)
    best = [n for n in names if n.startswith("best_epoch_")]
    expected = sorted(runner.best_epochs, key=lambda pair: pair[1])
    assert len(best) == 3 and best == [f"best_epoch_{e:04d}.pt" for _, e in expected]
    assert runner.best_epochs[0][0] == runner.best_value
    assert {"last.pt", "best.pt"} <= set(names)


def test_labels_outside_the_classes_are_one_line_before_training(tmp_path, monkeypatch):
    from trainkit.data import synthetic
    from trainkit.errors import UserError
    from trainkit.registry import DATASETS

    def bad_labels(**params):
        splits = synthetic(**params)
        splits.train.targets[0] = 12
        return splits

    monkeypatch.setitem(DATASETS._builders, "synthetic", bad_labels)
    with pytest.raises(UserError) as error:
        make_runner(tmp_path / "run")
    assert str(error.value) == (
        "data: label 12 in the train split is outside 0..9 (num_classes=10); "
        "fix the labels or the data set's num_classes"
    )


FIRST_STEP_PROBE = """
import gc, os, sys
from trainkit.registry import REGULARIZERS
from trainkit.regularization import Regularizer

@REGULARIZERS.register("first_step_probe")
class FirstStepProbe(Regularizer):
    def after_optimizer_step(self, model):
        with open("modules.txt", "w") as handle:
            handle.write("\\n".join(sys.modules))
        with open("gc.txt", "w") as handle:
            handle.write(f"{gc.isenabled()} {gc.get_freeze_count()}")
        os._exit(0)
"""


def test_training_starts_soon_and_collects_garbage(tmp_path):
    # torchmetrics imports scipy.signal (about half a second): only validation needs it.
    (tmp_path / "probe.py").write_text(FIRST_STEP_PROBE)
    result = run_trainkit(
        "train", "plugins=[probe]", "regularization=[first_step_probe]", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    modules = (tmp_path / "modules.txt").read_text().split()
    assert "trainkit.runner" in modules
    assert "torchmetrics" not in modules
    # The CLI starts with the garbage collector off; training runs with it on, and with
    # what startup built frozen.
    enabled, frozen = (tmp_path / "gc.txt").read_text().split()
    assert enabled == "True" and int(frozen) > 100_000


def test_deterministic_runs_set_cublas_up_and_warn_where_cuda_has_no_such_kernel(
    tmp_path, monkeypatch
):
    """On a GPU, cuBLAS repeats its sums only with CUBLAS_WORKSPACE_CONFIG set before its
    first product, and torch stops at an op with no deterministic kernel (ResNets' adaptive
    pooling backward) unless told to warn: both are set up by the run, here checked on a CPU."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    was = (torch.are_deterministic_algorithms_enabled(),)
    was += (torch.is_deterministic_algorithms_warn_only_enabled(),)
    try:
        make_runner(tmp_path, "trainer.deterministic=true", "trainer.max_epochs=1")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def test_keep_last_removes_only_the_checkpoints_the_run_wrote(tmp_path, monkeypatch):
    """An older file under a name the run uses (epoch_0000.pt, a user's) is not the run's to
    prune; the run's own, listed in its checkpoints, are, across a resume too."""
    mine = tmp_path / "run" / "checkpoints" / "epoch_0000.pt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    os.utime(mine, (0, 0))  # the oldest: pruned first by age
    save = Runner.save_checkpoints

    def save_then_crash(self, name, monitored=None):
        save(self, name, monitored)
        if name == "epoch_0002.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(Runner, "save_checkpoints", save_then_crash)
    run = ["trainer.keep_last=1", "trainer.max_epochs=3"]
    with pytest.raises(KeyboardInterrupt):
        make_runner(tmp_path / "run", *run).fit()
    monkeypatch.undo()
    names = sorted(p.name for p in mine.parent.iterdir())
    assert names == ["best.pt", "epoch_0000.pt", "epoch_0002.pt", "last.pt"]
    make_runner(tmp_path / "run", *run, f"resume={tmp_path / 'run'}").fit()
    names = sorted(p.name for p in mine.parent.iterdir())
    assert names == ["best.pt", "epoch_0000.pt", "epoch_0003.pt", "last.pt"]
    assert mine.read_text() == "mine"


def test_train_and_eval_stop_their_loaders_workers(tmp_path, monkeypatch):
    """Persistent workers left to the process's exit cost torch 2.11 five seconds each
    there when memory is pinned (a GPU run sat a minute after its last line), and a sweep
    whose jobs train in one process kept every job's."""
    from trainkit import evaluation, launch

    # Kept here, as the CLI's reference cycles keep them until the process exits: garbage
    # collection must not be what stops the workers.
    kept = []
    real_fit, real_build = Runner.fit, evaluation.build
    monkeypatch.setattr(Runner, "fit", lambda self: kept.append(self) or real_fit(self))
    monkeypatch.setattr(evaluation, "build", lambda *a: kept.append(real_build(*a)) or kept[-1])
    before = set(multiprocessing.active_children())
    cfg = config.compose(config.prepare([*SMALL, "trainer.max_epochs=1", "data.num_workers=2"]))
    launch.train(cfg, tmp_path / "run")
    assert set(multiprocessing.active_children()) <= before
    (tmp_path / "eval").mkdir()
    evaluation.evaluate_checkpoint(tmp_path / "run", [], tmp_path / "eval", plugins=[])
    assert set(multiprocessing.active_children()) <= before
    assert len(kept) == 2


def test_a_failed_fit_closes_the_runs_files(tmp_path, monkeypatch):
    """A run that fails is cleaned up by the CLI: nothing of it may be written after that
    (TensorBoard's writer thread reopened its file by name, and made it again)."""
    from trainkit import launch

    fitted = []

    def failing_fit(self):
        fitted.append(self)
        raise RuntimeError("boom")

    monkeypatch.setattr(Runner, "fit", failing_fit)
    cfg = config.compose(config.prepare([*SMALL, "logger.tensorboard=true"]))
    with pytest.raises(RuntimeError, match="boom"):
        launch.train(cfg, tmp_path / "run")
    (runner,) = fitted
    assert runner.logger.metrics_file.closed and runner.logger.writer.all_writers is None


def test_a_users_file_at_a_name_the_run_reaches_is_neither_saved_over_nor_removed(tmp_path):
    """epoch_0002.pt and best_epoch_0002.pt put there before the run reaches epoch 2 are
    someone's: the run keeps its other checkpoints and leaves those as they are."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("epoch_0002.pt", "best_epoch_0002.pt"):
        (folder / name).write_text("mine")
    run = ["trainer.keep_last=1", "trainer.keep_best=2", "trainer.max_epochs=3"]
    make_runner(tmp_path / "run", *run).fit()
    assert (folder / "epoch_0002.pt").read_text() == "mine"
    assert (folder / "best_epoch_0002.pt").read_text() == "mine"
    names = sorted(p.name for p in folder.iterdir())
    assert "epoch_0003.pt" in names and "epoch_0001.pt" not in names


@pytest.mark.parametrize(
    "hydra_yaml, overrides_yaml",
    [
        ("hydra:\n  mode: MULTIRUN\n", "- optimizer=adam\n"),  # no job node
        ("hydra: [\n", "{not: a list}\n"),  # not YAML; not a list
        ("hydra:\n  mode: MULTIRUN\n  job: {config: {override_dirname: {exclude_keys: 5}}}\n", ""),
        (b"\xff\xfe\x00", b"\xff"),  # not text
    ],
    ids=["no-job", "not-yaml", "keys-not-a-list", "binary"],
)
def test_a_runs_edited_hydra_files_do_not_fail_it_at_the_end(tmp_path, hydra_yaml, overrides_yaml):
    """The HParams row is read from .hydra/ after the test: files a resumed run's folder
    came with, which may say anything."""
    hydra_dir = tmp_path / "run" / ".hydra"
    hydra_dir.mkdir(parents=True)
    for name, text in (("hydra.yaml", hydra_yaml), ("overrides.yaml", overrides_yaml)):
        path = hydra_dir / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    summary = make_runner(tmp_path / "run", "trainer.max_epochs=1").fit()
    assert (tmp_path / "run" / "summary.json").is_file() and summary["test/acc"] >= 0
