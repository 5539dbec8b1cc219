"""Every recipe composes, validates, starts with its launch command, and trains briefly."""

from __future__ import annotations

import pytest

from tests.conftest import run_dirs, run_trainkit
from trainkit import config, paths

RECIPES = sorted(p.stem for p in paths.recipes_dir().glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_header_and_composition(recipe):
    text = (paths.recipes_dir() / f"{recipe}.yaml").read_text()
    assert text.splitlines()[0] == f"# trainkit train recipe={recipe}"
    assert "# @package _global_" in text
    cfg = config.compose(config.prepare([f"recipe={recipe}"]))
    config.validate(cfg)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_one_epoch(recipe, tmp_path):
    result = run_trainkit("train", f"recipe={recipe}", "trainer.max_epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(run_dirs(tmp_path)) == 1


def test_recipe_values_override_defaults_and_the_command_line_overrides_the_recipe():
    cfg = config.compose(config.prepare(["recipe=digits_resnet", "trainer.max_epochs=3"]))
    assert cfg.trainer.max_epochs == 3 and cfg.model.depth == 8


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
