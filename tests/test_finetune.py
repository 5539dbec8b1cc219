"""Fine-tuning: init_from, frozen parameters and their unfreezing, batch-norm statistics."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
from torch import nn

from tests.test_resume import crash_at_step
from trainkit import checkpoint, config, finetune
from trainkit.errors import UserError
from trainkit.runner import Runner

# An MLP is a Sequential: 1.* is its first Linear, 4.* its second, 7.* the head.
RUN = [
    "data=synthetic",
    "data.num_samples=400",
    "model=mlp",
    "model.hidden=[32,16]",
    "optimizer=adamw",
    "trainer.deterministic=true",
    "trainer.checkpoint_every=4",
    "logger.progress_bar=false",
]


def make_runner(run_dir, *overrides):
    return Runner(config.compose(config.prepare([*RUN, *overrides])), run_dir)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A trained run of 10 classes to start from."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    make_runner(run_dir, "trainer.max_epochs=1").fit()
    return run_dir


def source_weights(run_dir):
    return checkpoint.load(checkpoint.find(run_dir))["evaluation_model"]


def test_init_from_loads_what_fits_and_starts_a_head_of_another_shape_fresh(
    source_run, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="trainkit")
    runner = make_runner(tmp_path / "run", "data.num_classes=4", f"init_from={source_run}")
    weights = source_weights(source_run)
    model = runner.model.state_dict()
    for key in ("1.weight", "1.bias", "4.weight", "4.bias"):
        assert torch.equal(model[key], weights[key]), key
    assert model["7.weight"].shape == (4, 16) and weights["7.weight"].shape == (10, 16)
    said = caplog.text
    assert "init_from: loaded 4 tensors from" in said
    assert "started fresh (another shape): 7.weight, 7.bias" in said


def test_a_frozen_part_stays_until_its_epoch_and_the_log_counts_what_trains(
    source_run, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="trainkit")
    start = source_weights(source_run)["1.weight"]
    runner = make_runner(
        tmp_path / "run",
        f"init_from={source_run}",
        "finetune.freeze=[1.*]",
        "finetune.unfreeze_at_epoch=2",
        "trainer.max_epochs=2",
        "optimizer.layer_decay=0.5",
    )
    first_layer = runner.model[1].weight
    after_epoch = []
    real_epoch = Runner.train_epoch

    def train_epoch(self):
        record = real_epoch(self)
        after_epoch.append(first_layer.detach().clone())
        return record

    monkeypatch.setattr(Runner, "train_epoch", train_epoch)
    runner.fit()
    assert torch.equal(after_epoch[0], start)  # frozen through epoch 1
    assert not torch.equal(after_epoch[1], start)  # trained in epoch 2
    total = sum(p.numel() for p in runner.model.parameters())
    trainable = total - first_layer.numel() - runner.model[1].bias.numel()
    assert f"froze 2 tensors; {trainable:,} of {total:,} parameters trainable" in caplog.text
    assert f"epoch 2: unfroze 1.*; {total:,} of {total:,} parameters trainable" in caplog.text
    lrs = {id(p): g["lr"] for g in runner.optimizer.param_groups for p in g["params"]}
    assert lrs[id(runner.model[7].weight)] == 2 * lrs[id(runner.model[4].weight)]


@pytest.mark.parametrize(("unfreeze", "until"), [(0, "for the whole run"), (3, "until epoch 3")])
def test_freezing_what_init_from_started_fresh_is_warned_about(
    source_run, tmp_path, caplog, unfreeze, until
):
    """The head (7.*) has another shape here, so init_from starts it fresh: frozen, it would
    stay random (the README's stem of another channel count, in small)."""
    caplog.set_level(logging.INFO, logger="trainkit")
    make_runner(tmp_path / "run", "data.num_classes=4", f"init_from={source_run}",
                "finetune.freeze=[1.*,7.*]", f"finetune.unfreeze_at_epoch={unfreeze}")  # fmt: skip
    assert (
        "finetune.freeze holds 2 tensors that init_from did not load, at their random initial "
        f"values {until}: 7.weight, 7.bias; leave them out of finetune.freeze"
    ) in caplog.text
    caplog.clear()
    make_runner(tmp_path / "run2", f"init_from={source_run}", "finetune.freeze=[1.*]")
    assert "did not load" not in caplog.text and "froze 2 tensors" in caplog.text


def test_a_freeze_pattern_that_matches_nothing_is_said_before_init_from_loads(
    source_run, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="trainkit")
    with pytest.raises(UserError, match="pattern 'stem.*' matches no parameter"):
        make_runner(tmp_path / "run", f"init_from={source_run}", "finetune.freeze=[stem.*]")
    assert "init_from" not in caplog.text  # the mistake is all that is said


def test_a_run_resumed_after_its_unfreezing_epoch_trains_as_one_that_ran_through(
    source_run, tmp_path, monkeypatch
):
    tune = [
        f"init_from={source_run}",
        "finetune.freeze=[1.*,4.*]",
        "finetune.unfreeze_at_epoch=2",
        "trainer.max_epochs=3",
    ]
    straight = make_runner(tmp_path / "straight", *tune)
    straight.fit()
    crashing = make_runner(tmp_path / "crashed", *tune)
    # Mid-epoch 2 (5 steps an epoch), after the checkpoint at step 8.
    crash_at_step(crashing, 10, monkeypatch)
    resumed = make_runner(tmp_path / "crashed", *tune, f"resume={tmp_path / 'crashed'}")
    assert resumed.epoch == 1 and resumed.frozen  # unfrozen when its next epoch starts
    resumed.fit()
    ends = [checkpoint.load(tmp_path / run / "checkpoints" / "last.pt")["model"]
            for run in ("straight", "crashed")]  # fmt: skip
    for key in ends[0]:
        assert torch.equal(ends[0][key], ends[1][key]), key


@pytest.mark.parametrize("freeze_norm", [True, False])
def test_freeze_norm_keeps_the_batch_norm_statistics(freeze_norm, tmp_path):
    runner = make_runner(
        tmp_path / "run",
        "model.norm=batch",
        "trainer.max_epochs=1",
        f"finetune.freeze_norm={str(freeze_norm).lower()}",
    )
    norm = next(m for m in runner.model.modules() if isinstance(m, nn.BatchNorm1d))
    before = norm.running_mean.clone()
    runner.fit()
    assert torch.equal(norm.running_mean, before) == freeze_norm


def test_init_from_refuses_a_file_of_objects_and_weights_that_fit_nothing(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))

    torch.save({"evaluation_model": argparse.Namespace(a=1)}, tmp_path / "objects.pt")
    with pytest.raises(UserError, match="holds objects other than tensors"):
        finetune.init_from(model, tmp_path / "objects.pt")
    torch.save({"other.weight": torch.zeros(2, 3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="none of its 1 tensors fits this model .it holds other"):
        finetune.init_from(model, tmp_path / "other.pth")
    with pytest.raises(UserError, match="no such file or run directory"):
        finetune.init_from(model, tmp_path / "missing")


def test_a_freeze_pattern_that_matches_nothing_names_real_parameters():
    with pytest.raises(UserError) as error:
        finetune.freeze(nn.Sequential(nn.Linear(3, 2)), ["stem.*"])
    assert str(error.value) == (
        "finetune.freeze: pattern 'stem.*' matches no parameter; parameter names look like: "
        "0.weight, 0.bias ..."
    )
