"""trainkit.config: what a composed config may hold when a file, not the command line, says it."""

from __future__ import annotations

import pytest

from trainkit import config
from trainkit.errors import UserError

ENV_RECIPE = "# @package _global_\nhydra: {job: {env_set: {PYTHONPATH: /somewhere}}}\n"


def launch_of(overrides: list[str]):
    return config.compose_launch(config.prepare(overrides), sweep=False)


def test_the_environment_set_by_a_recipe_is_refused(tmp_path):
    (tmp_path / "rec.yaml").write_text(ENV_RECIPE)
    typed = [f"recipe={tmp_path / 'rec.yaml'}"]
    with pytest.raises(UserError, match=r"hydra.job.env_set.PYTHONPATH=/somewhere sets the envi"):
        config.check_hydra_code(launch_of(typed), typed)


def test_the_environment_typed_on_the_command_line_is_the_users_choice():
    typed = ["+hydra.job.env_set.OMP_NUM_THREADS=1", "+hydra.job.env_set.MY_FLAG=yes"]
    launch = launch_of(typed)
    config.check_hydra_code(launch, typed)
    assert launch.hydra.job.env_set.MY_FLAG == "yes"
