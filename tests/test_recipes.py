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
