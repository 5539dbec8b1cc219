"""The README's plugin example, end to end: a module on the command line, and an entry point."""

from __future__ import annotations

import json
import textwrap

from tests.conftest import run_dirs, run_trainkit

# The README's worked example, word for word.
PLUGIN = textwrap.dedent(
    '''
    import math

    from torch import nn

    from trainkit.registry import MODELS, PositiveInt


    @MODELS.register("tiny_mlp")
    def tiny_mlp(num_classes: int, input_shape: tuple, hidden: PositiveInt = 32) -> nn.Module:
        """One hidden layer; num_classes and input_shape come from the data."""
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
    '''
)


def test_plugin_module_from_the_command_line(tmp_path):
    (tmp_path / "my_components.py").write_text(PLUGIN)
    result = run_trainkit(
        "train",
        "plugins=[my_components]",
        "model=tiny_mlp",
        "model.hidden=16",
        "trainer.max_epochs=2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "name: tiny_mlp" in config and "hidden: 16" in config
    assert json.loads((run_dir / "summary.json").read_text())["test/acc"] > 0.8
    # The checkpoint names its plugin, but a file never decides what is imported: eval asks
    # for it on the command line, and then finds the model again.
    refused = run_trainkit("eval", f"checkpoint={run_dir}", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.endswith("add plugins=[my_components] if you trust them\n")
    evaluated = run_trainkit(
        "eval", f"checkpoint={run_dir}", "plugins=[my_components]", cwd=tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr


def test_ls_lists_a_plugins_components_with_their_parameters(tmp_path):
    (tmp_path / "my_components.py").write_text(PLUGIN)
    result = run_trainkit("ls", "model", "plugins=[my_components]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "│ tiny_mlp " in line)
    assert "hidden: an integer >= 1 = 32" in row


def test_plugin_parameters_are_validated(tmp_path):
    (tmp_path / "my_components.py").write_text(PLUGIN)
    result = run_trainkit(
        "train", "plugins=[my_components]", "model=tiny_mlp", "model.hidden=0", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "model.hidden=0 is out of range: it must be >= 1" in result.stderr


def test_plugin_from_an_installed_entry_point(tmp_path):
    """A package declaring [project.entry-points."trainkit.plugins"] is loaded automatically."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "my_components.py").write_text(PLUGIN)
    dist_info = site / "my_components-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: my-components\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text("[trainkit.plugins]\nmine = my_components\n")
    result = run_trainkit(
        "train",
        "model=tiny_mlp",
        "trainer.max_epochs=1",
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, result.stderr
    assert len(run_dirs(tmp_path)) == 1
