"""Every recipe composes, validates, starts with its launch command, and trains briefly."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_dirs, run_trainkit
from tests.fake_images import make_imagefolder
from tests.fake_text import make_text_csv
from trainkit import config, paths

RECIPES = sorted(p.stem for p in paths.recipes_dir().glob("*.yaml"))


def small_data(recipe: str, root) -> list[str]:
    """Overrides that swap a recipe's data for small local data of the same shape."""
    if recipe in ("resnet18_cifar10", "vit_cifar10"):
        return ["data=synthetic", "data.shape=[3,32,32]", "data.num_samples=200"]
    if recipe == "resnet50_imagenet":
        make_imagefolder(root / "images", per_class=10, size=(80, 72))
        return [
            f"data.root={root / 'images'}",
            "data.image_size=64",
            "data.resize=72",
            "data.val_fraction=0.2",
            "data.num_workers=0",
        ]
    if recipe == "finetune_imagefolder":
        return [*small_images(root / "images"), f"model.weights={imagenet_weights(root)}"]
    if recipe == "text_transformer":
        return [f"data.path={make_text_csv(root / 'texts.csv', n=90)}"]
    return []


def small_images(root, classes: int = 3) -> list[str]:
    make_imagefolder(root, classes=classes, per_class=10, size=(80, 72))
    return [f"data.root={root}", "data.image_size=64", "data.resize=72", "data.num_workers=0"]


def imagenet_weights(root) -> str:
    """A state dict of torchvision's ResNet-18 for ImageNet's 1,000 classes (random weights:
    the real file is never downloaded here)."""
    from torchvision import models

    path = root / "resnet18-imagenet.pth"
    if not path.exists():
        torch.save(models.resnet18(num_classes=1000).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_header_and_composition(recipe, tmp_path):
    text = (paths.recipes_dir() / f"{recipe}.yaml").read_text()
    first, *header = text.splitlines()
    assert first.startswith(f"# trainkit train recipe={recipe}")
    assert "# @package _global_" in text
    assert any("Reference" in line for line in header[:12]), "the header states its reference"
    cfg = config.compose(config.prepare([f"recipe={recipe}", *small_data(recipe, tmp_path)]))
    config.validate(cfg)


# The big models' steps take seconds on a CPU: their recipes train in the slow run.
BIG = {"resnet18_cifar10", "resnet50_imagenet", "vit_cifar10"}


@pytest.mark.parametrize(
    "recipe", [pytest.param(r, marks=[pytest.mark.slow] * (r in BIG)) for r in RECIPES]
)
def test_recipe_trains_a_few_steps(recipe, tmp_path):
    swap = small_data(recipe, tmp_path)
    result = run_trainkit("train", f"recipe={recipe}", "debug=fast", *swap, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(run_dirs(tmp_path)) == 1


def test_recipe_values_override_defaults_and_the_command_line_overrides_the_recipe():
    cfg = config.compose(config.prepare(["recipe=digits_resnet", "trainer.max_epochs=3"]))
    assert cfg.trainer.max_epochs == 3 and cfg.model.depth == 8


@pytest.mark.slow
def test_breast_cancer_mlp_reaches_its_reference_and_auroc_matches_scikit_learn(tmp_path):
    import csv
    import json

    from sklearn.metrics import average_precision_score, roc_auc_score
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_trainkit("train", "recipe=breast_cancer_mlp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test/acc"] >= 0.95
    assert summary["decision_threshold"] == 0.5
    with open(run_dir / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    target = [int(r["target"]) for r in rows]
    positive = [float(r["prob_1"]) for r in rows]
    assert summary["test/auroc"] == pytest.approx(roc_auc_score(target, positive), abs=1e-4)
    assert summary["test/average_precision"] == pytest.approx(
        average_precision_score(target, positive), abs=1e-4
    )
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert "test/pr_curve" in events.Tags()["tensors"]
    assert "test/confusion_matrix" in events.Tags()["images"]


def read_predictions(run_dir):
    import csv

    with open(run_dir / "predictions.csv") as handle:
        return list(csv.DictReader(handle))


def run_recipe(tmp_path, *args):
    import json

    result = run_trainkit("train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def test_diabetes_mlp_beats_the_mean_and_its_metrics_match_scikit_learn(tmp_path):
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    run_dir, summary = run_recipe(tmp_path, "recipe=diabetes_mlp")
    assert summary["test/r2"] > 0.3  # predicting the mean scores 0
    rows = read_predictions(run_dir)
    target = [float(r["target"]) for r in rows]
    predicted = [float(r["prediction"]) for r in rows]
    assert summary["test/r2"] == pytest.approx(r2_score(target, predicted), abs=1e-4)
    assert summary["test/mae"] == pytest.approx(mean_absolute_error(target, predicted), rel=1e-4)
    assert summary["test/rmse"] == pytest.approx(
        mean_squared_error(target, predicted) ** 0.5, rel=1e-4
    )


@pytest.mark.slow
def test_digits_triplet_embeddings_find_same_digit_neighbours(tmp_path):
    run_dir, summary = run_recipe(tmp_path, "recipe=digits_triplet", "trainer.max_epochs=3")
    assert summary["test/knn_acc"] > 0.8  # chance: 0.1
    rows = read_predictions(run_dir)
    right = sum(r["target"] == r["prediction"] for r in rows) / len(rows)
    assert right == pytest.approx(summary["test/knn_acc"], abs=1e-6)


@pytest.mark.slow
def test_digit_strings_ctc_reads_strings_far_better_than_chance(tmp_path):
    run_dir, summary = run_recipe(tmp_path, "recipe=digit_strings_ctc", "trainer.max_epochs=3")
    assert summary["test/seq_acc"] > 0.5  # chance: about 1e-4
    assert summary["test/cer"] < 0.2
    rows = read_predictions(run_dir)
    right = sum(r["target"] == r["prediction"] for r in rows) / len(rows)
    assert right == pytest.approx(summary["test/seq_acc"], abs=1e-6)


@pytest.mark.slow
def test_finetune_imagefolder_starts_from_a_run_and_unfreezes_its_stem(tmp_path):
    """The recipe from a trainkit run of 5 classes, on a folder of 3: the stem and layer1
    stay frozen for two epochs, the head starts fresh."""
    source = tmp_path / "source"
    source.mkdir()
    run_recipe(
        source, "recipe=finetune_imagefolder", "model.weights=null", "debug=fast",
        *small_images(source / "images", classes=5),
    )  # fmt: skip
    (source_run,) = run_dirs(source)
    target = tmp_path / "target"
    target.mkdir()
    run_dir, summary = run_recipe(
        target, "recipe=finetune_imagefolder", "model.weights=null", f"init_from={source_run}",
        "trainer.max_epochs=3", *small_images(target / "images"),
    )  # fmt: skip
    log = (run_dir / "train.log").read_text()
    assert "started fresh (another shape): fc.weight, fc.bias" in log
    assert "finetune: froze 15 tensors" in log  # conv1, bn1 and layer1 (2 blocks of 6)
    assert "epoch 3: unfroze conv1.*, bn1.*, layer1.*; 11,178,051 of 11,178,051" in log
    assert summary["epochs"] == 3 and "test/balanced_acc" in summary
