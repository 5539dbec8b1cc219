"""Every option of every config group composes, validates and trains a few steps.

Parametrized over the YAML files, so adding an option is what gets it tested. Each loss
trains within the task it belongs to, on small data of that task's kind.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests import fake_images
from tests.fake_text import make_text_csv
from trainkit import config, paths
from trainkit.losses import fit_of
from trainkit.runner import Runner

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
MODEL_DATA = {
    "conv_transformer": TASK_DATA["sequence"],
    "text_transformer": ["data=text_csv", "data.max_len=16"],  # plus a file, below
}
LOSS_DATA = {"bce": [*SYNTHETIC, "data.num_classes=2"]}  # one logit: two classes


def files_for_data(option: str, root: Path) -> list[str]:
    """Small fake files in the on-disk format of the data sets that read files."""
    makers = {
        "cifar10": fake_images.make_cifar10,
        "cifar100": fake_images.make_cifar100,
        "mnist": fake_images.make_mnist,
        "fashion_mnist": fake_images.make_fashion_mnist,
    }
    if option in makers:
        makers[option](root)
        return [f"data.root={root}", "data.download=false", "model=mlp"]
    if option == "imagefolder":
        fake_images.make_imagefolder(root, per_class=10)
        return [
            f"data.root={root}",
            "data.image_size=32",
            "data.resize=36",
            "data.val_fraction=0.2",
            "data.num_workers=0",
            "model=mlp",
        ]
    if option == "text_csv":
        return [f"data.path={make_text_csv(root / 'texts.csv', n=90)}", "data.max_len=16"]
    if option == "digit_strings":
        return ["data.num_strings=300"]
    return []


def overrides_for(group: str, option: str, root: Path) -> list[str]:
    choice = f"{group}=[{option}]" if group == "regularization" else f"{group}={option}"
    overrides = [*SMALL, *SYNTHETIC, choice]
    if group == "data":  # the data set picks its own task and model
        overrides = [*SMALL, choice, *files_for_data(option, root)]
    if group == "loss":
        task = fit_of(option).task
        overrides = [*SMALL, *LOSS_DATA.get(option, TASK_DATA[task]), choice]
    if group == "task":
        overrides = [*SMALL, *TASK_DATA[option], choice]
    if group == "model":  # one batch of each split: big models cost seconds a step on CPU
        overrides.append("debug=fast")
    if group == "model" and option in MODEL_DATA:
        overrides = [*SMALL, *MODEL_DATA[option], choice, "debug=fast"]
        if option == "text_transformer":
            overrides.append(f"data.path={make_text_csv(root / 'texts.csv', n=90)}")
    return overrides


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_option_trains_a_few_steps(group, option, tmp_path):
    (tmp_path / "files").mkdir()
    cfg = config.compose(config.prepare(overrides_for(group, option, tmp_path / "files")))
    config.validate(cfg)
    summary = Runner(cfg, tmp_path / "run").fit()
    assert summary["epochs"] >= 1
    assert math.isfinite(summary["test/loss"])
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_every_builtin_loss_belongs_to_one_task():
    losses = [p.stem for p in (paths.config_dir() / "loss").glob("*.yaml")]
    for loss in losses:
        assert fit_of(loss).task in TASK_DATA, loss
