"""Every user mistake ends in one line on stderr, exit status 2, and no run directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import run_dirs, run_trainkit
from trainkit import paths
from trainkit.cli import main

# Mistakes caught before Hydra makes a run directory: checked in-process (fast).
EARLY_MISTAKES = [
    (["optimizer=adamm"], "unknown optimizer 'adamm'; did you mean 'adam'? available: adadelta,"),
    (["optimizer.name=adamm"], "unknown optimizer 'adamm'; did you mean 'adam'?"),
    (["optimizer.lrr=0.1"], "unknown key optimizer.lrr; did you mean 'lr'?"),
    (["+optimizer.lrr=0.1"], "unknown key optimizer.lrr; did you mean 'lr'?"),
    (["optimizer.learning_rate=0.1"], "unknown key optimizer.learning_rate; did you mean 'lr'?"),
    (["model.init=xavier"], "model.init='xavier' is not a choice; did you mean 'xavier_normal'?"),
    (
        ["regularization=[l1]", "regularization.l1.weight=0.1"],
        "unknown key regularization.l1.weight; did you mean 'strength'?",  # not 'weights_only'
    ),
    (
        ["trainer.max_epochs=ten"],
        "trainer.max_epochs='ten' has the wrong type: it must be an integer",
    ),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range: it must be >= 1"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 is out of range: it must be > 0"),
    # (SGD trained at torch's lr 0.001, which no file of the run said)
    (["~optimizer.lr"], "~optimizer.lr deletes a setting, and what it sets would then fall"),
    (["~data.batch_size"], "give it a value instead: data.batch_size=VALUE"),
    (["optimizer.lr=0"], "optimizer.lr=0 is out of range: it must be > 0"),
    (["model.dropout=1.5"], "model.dropout=1.5 is out of range: it must be >= 0 and < 1"),
    (["loss.label_smoothing=1.0"], "loss.label_smoothing=1.0 is out of range"),
    (["data.batch_size=0"], "data.batch_size=0 is out of range: it must be >= 1"),
    (["data.prefetch_factor=4"], "data.prefetch_factor=4 counts the batches each worker loads"),
    (["data.pin_memory=maybe"], "data.pin_memory='maybe' has the wrong type: it must be true"),
    (
        ["optimizer.nesterov=maybe"],
        "optimizer.nesterov='maybe' has the wrong type: it must be true or false",
    ),
    (["model=resnet_cifr"], "unknown model 'resnet_cifr'; did you mean 'resnet_cifar'?"),
    (["regularization=[grad_clp]"], "unknown regularizer 'grad_clp'; did you mean 'grad_clip'?"),
    (["scheduler=cosin"], "unknown scheduler 'cosin'; did you mean 'cosine'?"),
    (["recipe=nope"], "unknown recipe 'nope'"),
    (["recipe=missing.yaml"], "recipe=missing.yaml: no such file"),
    (["+foo=1"], "unknown key foo"),
    (["optimizer.lr=[1"], "cannot parse override 'optimizer.lr=[1'"),
    (["plugins=[no_such_module_xyz]"], "plugins: cannot import 'no_such_module_xyz'"),
    (["logger.log_every_n_steps=-3"], "logger.log_every_n_steps=-3 is out of range"),
    (
        ["loss=mse"],
        "loss=mse needs predictions and continuous targets, which task=classification does "
        "not give; task=classification takes bce, cross_entropy, focal, nll "
        "(loss=mse belongs to task=regression)",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), EARLY_MISTAKES)
def test_mistakes_fail_in_one_line_before_any_run_dir(
    overrides, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("trainkit: error: ")
    assert message in err
    assert not (tmp_path / "outputs").exists()


def test_a_recipe_with_a_yaml_syntax_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.yaml").write_text("# @package _global_\noptimizer:\n  lr: [0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "recipe=broken.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "recipe broken.yaml is not valid YAML" in err and err.count("\n") == 1


# A recipe file's lines, and the error: said to be in the file when the file sets its key.
RECIPE_MISTAKES = [
    ("trainer:\n  max_epochz: 3", [], "my.yaml: unknown key trainer.max_epochz; did you mean"),
    ("defaults:\n  - override /optimizer: adamm", [], "my.yaml: unknown optimizer 'adamm'"),
    ("model:\n  hidden: [a]", ["model=mlp"], "my.yaml: model.hidden[0]='a' has the wrong type"),
    ("model:\n  hidden: [8]", [], "my.yaml: unknown key model.hidden"),  # (for model=mlp)
    ("optimizer:\n  lr: -1", [], "my.yaml: optimizer.lr=-1 is out of range"),
    # The command line's own value, or another key's mistake: said as it is.
    ("optimizer:\n  lr: -1", ["optimizer.lr=-2"], "error: optimizer.lr=-2 is out of range"),
    ("optimizer:\n  lr: 0.1", ["trainer.max_epochs=0"], "error: trainer.max_epochs=0 is out"),
]


@pytest.mark.parametrize("verb", ["train", "lr-plot"])
@pytest.mark.parametrize(("lines", "overrides", "message"), RECIPE_MISTAKES)
def test_a_mistake_a_recipe_file_makes_is_said_to_be_in_the_file(
    tmp_path, monkeypatch, capsys, verb, lines, overrides, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.yaml").write_text(f"# @package _global_\n{lines}\n")
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "recipe=my.yaml", *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("trainkit: error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.yaml"]


def test_a_sweep_job_names_the_recipe_file_its_mistake_is_in(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "my.yaml").write_text(
        "# @package _global_\ntrainer:\n  max_epochz: 3\n"
    )
    with pytest.raises(SystemExit):
        main(["train", "-m", "recipe=recipes/my.yaml", "optimizer.lr=0.1,0.2"])
    err = capsys.readouterr().err
    assert err.startswith(
        "trainkit: error: sweep job 0 (optimizer.lr=0.1): recipes/my.yaml: unknown key "
        "trainer.max_epochz"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipes"]


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    assert "unknown command 'trian'; did you mean 'train'?" in capsys.readouterr().err


# Mistakes found while building the run (they need the data) are in tests/test_bad_inputs.py,
# with every other bad input: one line, and every file as it was.


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys; from trainkit.cli import main; main(['--help']); main(['--version']); "
        "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'heavy import'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: trainkit" in result.stdout and "trainkit 0." in result.stdout


def test_every_command_answers_help_with_its_usage_and_examples():
    """``trainkit COMMAND --help`` (or ``-h``): the command's synopsis, what it does and its
    examples, exit 0, without loading torch (train's is Hydra's, tested below)."""
    code = (
        "import sys; from trainkit.cli import main\n"
        "try: main(['no-such-command'])\n"
        "except SystemExit: pass\n"
        "for command in sys.argv[1:]: main([command, 'x=1', '-h']); main([command, '--help'])\n"
        "assert 'torch' not in sys.modules, 'heavy import'"
    )
    verbs = ["eval", "predict", "export", "ls", "lr-plot", "lr-find", "compare"]
    result = subprocess.run([sys.executable, "-c", code, *verbs], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = result.stderr.strip().rsplit("commands: ", 1)[1].split(", ")  # (every command)
    assert sorted(listed) == sorted(["train", *verbs])
    helps = result.stdout.split("usage: trainkit ")[1:]
    assert len(helps) == 2 * len(verbs)
    for verb, text in zip([v for v in verbs for _ in "12"], helps, strict=True):
        synopsis, what, *rest = text.split("\n\n")
        assert synopsis.startswith(f"{verb} ") and what[0].isupper() and what.endswith(".")
        assert f"examples:\n  trainkit {verb} " in text, text
        assert ("OVERRIDES are train's" in text) == (verb in ("lr-plot", "lr-find"))


REGISTRY_NAMES = """
import json
from trainkit.registry import GROUP_REGISTRIES, MULTI_GROUPS, load_components
load_components()
print(json.dumps({g: r.names() for g, r in {**GROUP_REGISTRIES, **MULTI_GROUPS}.items()}))
"""


def test_train_help_lists_the_groups_and_options(tmp_path):
    result = run_trainkit("train", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The registries of a fresh process: this one may hold a plugin an earlier test imported.
    names = subprocess.run(
        [sys.executable, "-c", REGISTRY_NAMES], capture_output=True, text=True, check=True
    )
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines() if ": " in line}
    for group, registered in json.loads(names.stdout).items():
        assert lines[group] == f"{group}: {', '.join(registered)}"
    recipes = sorted(p.stem for p in paths.recipes_dir().glob("*.yaml"))
    assert lines["recipe"] == f"recipe: {', '.join(recipes)}"
    assert not (tmp_path / "outputs").exists()


def test_a_fixed_length_tuple_checks_its_length(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["train", "optimizer=adam", "optimizer.betas=[0.9]"])
    assert "optimizer.betas=[0.9] must have 2 items" in capsys.readouterr().err


# --- data that cannot be read ----------------------------------------------------------------

IMAGEFOLDER = [
    "data=imagefolder",
    "model=mlp",
    "data.image_size=32",
    "data.resize=36",
    "data.num_workers=0",
    "data.val_fraction=0.2",
    "trainer.max_epochs=1",
    "logger.progress_bar=false",
]


@pytest.mark.parametrize(("folder", "num_workers"), [("train", 0), ("train", 2), ("val", 0)])
def test_an_image_that_cannot_be_decoded_under_on_bad_image_error(folder, num_workers, tmp_path):
    """In train/ it is met in the first epoch: no run directory is left. In val/ (the test
    split) it is met after training: the run directory and its checkpoints are kept."""
    from tests.fake_images import make_imagefolder
    from tests.test_data_vision import make_bad_images

    make_imagefolder(tmp_path / "images", per_class=10)
    garbage, truncated = make_bad_images(tmp_path / "images" / folder)
    truncated.unlink()  # one bad file, so that the message is known
    result = run_trainkit(
        "train",
        *IMAGEFOLDER,
        f"data.root={tmp_path / 'images'}",
        f"data.num_workers={num_workers}",
        "data.on_bad_image=error",
        cwd=tmp_path,
    )
    message = (
        f"trainkit: error: data imagefolder: {garbage} cannot be decoded (cannot identify "
        f"image file '{garbage}'); delete or replace it, or set data.on_bad_image=skip\n"
    )
    assert result.returncode == 2 and result.stderr == message, result.stdout + result.stderr
    if folder == "train":
        assert run_dirs(tmp_path) == []
    else:
        (run_dir,) = run_dirs(tmp_path)
        assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_an_unwritable_output_directory_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").write_text("a file where the run directories would go")
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("trainkit: error: cannot write run directories under outputs")
    assert line.endswith("set hydra.run.dir=SOMEWHERE_WRITABLE or run from a writable directory")
    assert (tmp_path / "outputs").read_text().startswith("a file")  # nothing lost


@pytest.mark.parametrize(
    ("command", "fix"), [("predict", "batch_size=N"), ("eval", "data.batch_size")]
)
def test_out_of_memory_outside_training_is_one_line(command, fix, monkeypatch, capsys):
    import torch

    def greedy(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB. ...")

    monkeypatch.setattr(f"trainkit.cli.{'evaluate' if command == 'eval' else command}", greedy)
    with pytest.raises(SystemExit) as exit_info:
        main([command])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line
        == f"trainkit: error: out of memory on the GPU (asked for 512.00 MiB); use a smaller {fix}"
    )


def test_an_error_that_is_no_users_mistake_still_shows_its_traceback(monkeypatch):
    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setattr("trainkit.cli.predict", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["predict"])


def test_a_signal_a_library_turns_into_an_error_still_ends_as_interrupted(monkeypatch, capsys):
    """SIGTERM raises inside whatever runs; Hydra's composition has caught such an exception
    and raised an error of its own with no message. The command ends as interrupted, not
    with an empty `trainkit: error:` line."""
    import os
    import signal

    from trainkit import cli
    from trainkit.errors import UserError

    def composing(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException:
            raise UserError("") from None

    monkeypatch.setattr(cli, "_SIGNALLED", [])
    monkeypatch.setattr(cli, "evaluate", composing)
    handlers = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["eval"])
    finally:  # the command ignores further signals while it ends; this process goes on
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "trainkit: interrupted (SIGTERM)\n"
