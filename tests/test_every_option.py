"""Every option of every config group composes, validates and trains a few steps.

Parametrized over the YAML files, so adding an option is what gets it tested. Each loss
trains within the task it belongs to, on small data of that task's kind.
"""

from __future__ import annotations

import math

import pytest

from trainkit import config, paths
from trainkit.runner import Runner
from trainkit.tasks import TASK_LOSSES

SMALL = [
    "trainer.max_epochs=1",
    "logger.tensorboard=false",
    "logger.progress_bar=false",
]
# Small data of each task's kind.
SYNTHETIC = ["data=synthetic", "data.num_samples=200", "data.batch_size=32"]
TASK_DATA = {
    "classification": SYNTHETIC,
    "regression": ["data=diabetes"],
    "metric_learning": ["task=metric_learning", *SYNTHETIC],
    "sequence": ["data=digit_strings", "data.num_strings=200", "data.batch_size=32"],
}
GROUPS = ["data", "model", "loss", "optimizer", "scheduler", "augmentation", "regularization"]
GROUPS += ["task", "debug"]
OPTIONS = [
    pytest.param(group, path.stem, id=f"{group}={path.stem}")
    for group in GROUPS
    for path in sorted((paths.config_dir() / group).glob("*.yaml"))
]
# Models that need inputs of their own kind.
MODEL_DATA = {"conv_transformer": TASK_DATA["sequence"]}
LOSS_DATA = {"bce": [*SYNTHETIC, "data.num_classes=2"]}  # one logit: two classes


def overrides_for(group: str, option: str) -> list[str]:
    choice = f"{group}=[{option}]" if group == "regularization" else f"{group}={option}"
    overrides = [*SMALL, *SYNTHETIC, choice]
    if group == "data":  # the data set picks its own task and model
        overrides = [*SMALL, choice]
    if group == "loss":
        task = next(task for task, losses in TASK_LOSSES.items() if option in losses)
        overrides = [*SMALL, *LOSS_DATA.get(option, TASK_DATA[task]), choice]
    if group == "task":
        overrides = [*SMALL, *TASK_DATA[option], choice]
    if group == "model" and option in MODEL_DATA:
        overrides = [*SMALL, *MODEL_DATA[option], choice]
    return overrides


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_option_trains_a_few_steps(group, option, tmp_path):
    cfg = config.compose(config.prepare(overrides_for(group, option)))
    config.validate(cfg)
    summary = Runner(cfg, tmp_path / "run").fit()
    assert summary["epochs"] >= 1
    assert math.isfinite(summary["test/loss"])
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_every_builtin_loss_belongs_to_one_task():
    losses = [p.stem for p in (paths.config_dir() / "loss").glob("*.yaml")]
    for loss in losses:
        assert sum(loss in task_losses for task_losses in TASK_LOSSES.values()) == 1, loss
