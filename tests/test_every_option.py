"""Every option of every config group composes, validates and trains a few steps.

Parametrized over the YAML files, so adding an option is what gets it tested.
"""

from __future__ import annotations

import math
import re

import pytest

from trainkit import config, paths
from trainkit.errors import UserError
from trainkit.losses import LOSS_INPUTS, check_classification_loss
from trainkit.runner import Runner

SMALL = [
    "data=synthetic",
    "data.num_samples=200",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "logger.tensorboard=false",
    "logger.progress_bar=false",
]
GROUPS = ["data", "model", "loss", "optimizer", "scheduler", "augmentation", "regularization"]
OPTIONS = [
    pytest.param(group, path.stem, id=f"{group}={path.stem}")
    for group in GROUPS
    for path in sorted((paths.config_dir() / group).glob("*.yaml"))
]


def _is_classification_loss(name: str) -> bool:
    try:
        check_classification_loss(name)
        return True
    except UserError:
        return False


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_option_trains_a_few_steps(group, option, tmp_path):
    choice = f"{group}=[{option}]" if group == "regularization" else f"{group}={option}"
    overrides = [*SMALL, choice]
    if group == "data":  # the mlp takes images (flattened) and tables alike
        overrides = [o for o in overrides if not o.startswith("data.num_samples")] + ["model=mlp"]
    if group == "loss" and not _is_classification_loss(option):
        with pytest.raises(
            UserError, match=re.escape(f"loss={option} needs {LOSS_INPUTS[option]}")
        ):
            config.validate(config.compose(config.prepare(overrides)))
        return  # its task (regression, metric learning, sequences) comes with its own data
    cfg = config.compose(config.prepare(overrides))
    config.validate(cfg)
    summary = Runner(cfg, tmp_path / "run").fit()
    assert summary["epochs"] >= 1
    assert math.isfinite(summary["test/loss"])
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
