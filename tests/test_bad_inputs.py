"""The catalog of bad inputs and faults: each ends in one line and changes nothing.

Every case runs a real `trainkit` command (in this process where a separate one adds nothing)
in a fresh directory, and asserts: the documented exit status (2 for a mistake), exactly one
``trainkit: error:`` line that says what was wrong, no traceback, and every file that existed
before the command byte for byte as it was (and, unless the case leaves a record of what
failed, no new file either). A new verb or option adds its mistakes here.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_trainkit
from trainkit.cli import main

QUIET = ["logger.progress_bar=false", "trainer.max_epochs=1"]
SMALL = [
    "data=synthetic",
    "data.num_samples=200",
    "model=mlp",
    "model.hidden=[16]",
    "logger.progress_bar=false",
]


# --- the catalog ---------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    make: Callable[[Path, Path], list[str]]  # (cwd, a finished run to copy) -> the arguments
    expect: str  # in the one error line (or, for status 0, in stderr)
    status: int = 2
    process: bool = False  # a process of its own: what is tested is process behaviour
    leaves_record: bool = False  # a sweep's failed jobs stay, with their failed.json
    slow: bool = False  # run with -m slow: a second of its kind that takes long


CASES: list[Case] = []


def mistake(id: str, args: list[str], expect: str, **options) -> None:
    """A case that needs no files: ``trainkit ARGS`` in an empty directory."""
    CASES.append(Case(id, lambda cwd, run: list(args), expect, **options))


def case(id: str, expect: str, **options):
    """A case whose files ``make(cwd, finished_run)`` sets up; it returns the arguments."""

    def register(make):
        CASES.append(Case(id, make, expect, **options))
        return make

    return register


def train(*overrides: str) -> list[str]:
    """``trainkit train`` on a small synthetic data set, with ``overrides``."""
    return ["train", *SMALL, "trainer.max_epochs=1", *overrides]


def train_mlp_on(*overrides: str) -> list[str]:
    """``trainkit train`` of a small MLP on the data ``overrides`` choose."""
    return ["train", "model=mlp", "model.hidden=[16]", *QUIET, *overrides]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def resume_with_override(run: Path, cwd: Path, override: str) -> list[str]:
    """Resume a stopped copy of ``run`` whose saved overrides were given ``override`` (its
    files edited after the run, or a run directory from elsewhere)."""
    folder = unfinished(run, cwd / "run")
    overrides = folder / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- {override}\n")
    return ["train", f"resume={folder}"]


# --- config: caught before any directory exists ---

mistake("unknown-command", ["trian"], "unknown command 'trian'; did you mean 'train'?")
mistake("unknown-option", train("optimizer=adamm"), "unknown optimizer 'adamm'; did you mean")
mistake("unknown-option-name", train("optimizer.name=adamm"), "unknown optimizer 'adamm'")
mistake("unknown-key", train("optimizer.lrr=0.1"), "unknown key optimizer.lrr; did you mean 'lr'")
mistake("unknown-key-plus", train("+optimizer.lrr=0.1"), "unknown key optimizer.lrr")
mistake("unknown-top-key", train("+foo=1"), "unknown key foo")
# Hydra's flags that print and run nothing compose the config too: the same one line.
mistake("print-config-typo", ["train", "--cfg", "job", "optimizer=adamm"], "unknown optimizer")
mistake("help-typo", ["train", "--help", "optimizer.lrr=1"], "unknown key optimizer.lrr")


class _OpensAFile:
    """Unpickled, it makes ``pwned`` in the working directory: code run by reading a file."""

    def __reduce__(self):
        return (open, ("pwned", "w"))


@case("rerun-a-pickle", "--experimental-rerun loads a pickled config, and a pickle can run code")
def _(cwd, run):
    write(cwd / "config.pickle", pickle.dumps(_OpensAFile()))
    return ["train", "--experimental-rerun", "config.pickle"]


mistake("model-weights-missing",
        ["train", "data=synthetic", "model=resnet18", "model.weights=gone.pth"],
        "model.weights=gone.pth: no such file")  # fmt: skip
mistake("shell-completion", ["train", "-sc", "install=bash"],
        "--shell-completion is Hydra's, for a program of one word")  # fmt: skip
# A metric no run of the task logs: found before a sweep's jobs run (they each failed).
mistake(
    "monitor-misspelt-in-a-sweep",
    ["train", "-m", "trainer.monitor=val/accc", "optimizer=adam,sgd"],
    "trainer.monitor='val/accc' is not a metric a task=classification run monitors; "
    "did you mean 'val/acc'?",
)
mistake(
    "objective-misspelt",
    ["train", "-m", "hparams_search=random", "hydra.sweeper.objectives=[val/accc]"],
    "hydra.sweeper.objectives: 'val/accc' is not a metric",
)
# Another config than trainkit's would pass around its checks (a log file of the user's).
for flag in ("--config-name", "--config-dir", "-cd", "--config-path"):
    mistake(f"own-config{flag}", ["train", flag, "mine", "optimizer=sgd"],
            f"{flag} chooses Hydra's config, and trainkit checks and runs its own")  # fmt: skip
mistake("two-modes", ["train", "--cfg", "job", "-m", "optimizer=adam,sgd"],
        "--cfg and -m cannot be given together; give one of them")  # fmt: skip
mistake(
    "list-split-by-the-shell",
    train("augmentation=pipeline", "augmentation.steps=[{name:", "RandomCrop,", "padding:", "1}]"),
    "the shell split one override at its spaces; quote it whole: "
    "'augmentation.steps=[{name: RandomCrop, padding: 1}]'",
)
mistake("group-given-true", train("debug=true"), "debug=true names no debug option; use debug=NAME")
mistake("sweep-without-m", train("optimizer=adam,sgd"),
        "optimizer=adam,sgd is a sweep: to train one run for each, add -m")  # fmt: skip
mistake("sweep-of-a-key-without-m", train("optimizer.lr=0.1,0.01"),
        "add -m (trainkit train -m optimizer.lr=0.1,0.01); for a list, write")  # fmt: skip
mistake("sweep-of-regularizers-without-m", train("regularization=l1,grad_clip"),
        "regularization=[l1,grad_clip] uses them all in one run; to train one run")  # fmt: skip
mistake("search-range-without-m", train("optimizer.lr=interval(0.01,0.1)"),
        "is a range to search: add -m and a search, e.g. trainkit train -m")  # fmt: skip
mistake(
    "key-of-an-unchosen-regularizer",
    train("regularization.early_stopping.patience=5"),
    "(early_stopping is not chosen); add it: regularization=[early_stopping] (or to your list)",
)
mistake("wrong-type", train("trainer.max_epochs=ten"), "trainer.max_epochs='ten' has the wrong")
mistake("float-for-int", train("trainer.max_epochs=1.5"), "trainer.max_epochs=1.5 has the wrong")
mistake("zero-epochs", train("trainer.max_epochs=0"), "trainer.max_epochs=0 is out of range")
mistake("negative-lr", train("optimizer.lr=-1"), "optimizer.lr=-1 is out of range: it must be > 0")
mistake("zero-lr", train("optimizer.lr=0"), "optimizer.lr=0 is out of range")
mistake("infinite-lr", train("optimizer.lr=inf"), "optimizer.lr=inf is not a finite number")
mistake("minus-infinite-lr", train("optimizer.lr=-inf"), "optimizer.lr=-inf is not a finite")
mistake("nan-lr", train("optimizer.lr=nan"), "optimizer.lr=nan is not a finite number")
mistake("dropout-range", train("model.dropout=1.5"), "model.dropout=1.5 is out of range")
mistake("batch-size-zero", train("data.batch_size=0"), "data.batch_size=0 is out of range")
mistake("bool-type", train("data.on_device=maybe"), "data.on_device='maybe' has the wrong type")
mistake("literal", train("trainer.monitor_mode=sideways"), "trainer.monitor_mode='sideways'")
mistake("precision", train("trainer.precision=16"), "trainer.precision=16 has the wrong type")
mistake("nonfinite-mode", train("trainer.nonfinite=sometimes"), "trainer.nonfinite='sometimes'")
mistake("lr-factor", train("trainer.nonfinite_lr_factor=1"), "trainer.nonfinite_lr_factor=1 is")
mistake("log-every", train("logger.log_every_n_steps=-3"), "logger.log_every_n_steps=-3 is out")
mistake("prefetch", train("data.prefetch_factor=4"), "data.prefetch_factor=4 counts the batches")
mistake("devices-zero", train("trainer.devices=0"), "trainer.devices=0 is out of range")
mistake("not-a-device", train("trainer.device=tpu"), "trainer.device='tpu' is not a device")
mistake("meta-device", train("trainer.device=meta"), "trainer.device='meta' is not a device")
mistake("huge-seed", train("trainer.seed=99999999999999999999999"), "trainer.seed=9999")
mistake("huge-batch", train("data.batch_size=99999999999999999999999"), "is too large: it must")
mistake("devices-beyond-the-cores", train("trainer.devices=100000"),
        "trainer.devices=100000 processes on")  # fmt: skip
mistake("tuple-length", train("optimizer=adam", "optimizer.betas=[0.9]"), "must have 2 items")
mistake("unknown-model", train("model=resnet_cifr"), "unknown model 'resnet_cifr'; did you mean")
mistake("unknown-regularizer", train("regularization=[grad_clp]"), "unknown regularizer")
mistake("unknown-scheduler", train("scheduler=cosin"), "unknown scheduler 'cosin'")
mistake("unknown-recipe", train("recipe=nope"), "unknown recipe 'nope'")
mistake("missing-recipe-file", train("recipe=missing.yaml"), "recipe=missing.yaml: no such file")
mistake("unparsable", train("optimizer.lr=[1"), "cannot parse override 'optimizer.lr=[1'")
mistake("no-key", train("=3"), "override '=3' has no key; write KEY=VALUE")
mistake("task-loss", train("loss=mse"), "loss=mse needs predictions and continuous targets")
mistake("fractions", train("data.val_fraction=0.9", "data.test_fraction=0.2"), "must sum to")
mistake("fractions-at-one", train("data.val_fraction=0.5", "data.test_fraction=0.5"), "sum to")
mistake("missing-plugin", train("plugins=[no_such_module_xyz]"), "cannot import 'no_such_module")
mistake("unknown-search", ["train", "-m", "hparams_search=nope"], "unknown hparams_search 'nope'")
SEARCH = ["train", "-m", *SMALL, "trainer.max_epochs=1", "hydra.sweeper.n_trials=1"]
mistake(
    "unknown-pruner",
    [*SEARCH, "hparams_search=tpe", "hydra.sweeper.pruner=mediann"],
    "hydra.sweeper.pruner='mediann' is not a choice; did you mean 'median'? choices: 'median', ",
)
mistake(
    "unknown-sampler",
    [*SEARCH, "hparams_search=tpe", "hydra.sweeper.sampler=cmaes"],
    "hydra.sweeper.sampler='cmaes' is not a choice; choices: 'tpe', 'random', 'grid'",
)
mistake(
    "grid-of-an-interval",
    [*SEARCH, "hparams_search=grid", "optimizer.lr=interval(0.01,0.1)"],
    "hparams_search=grid needs a list of values for optimizer.lr",
)
SEARCH_ANY = ["train", "-m", *SMALL, "trainer.max_epochs=1"]
mistake(
    "search-no-trials",
    [*SEARCH_ANY, "hparams_search=random", "hydra.sweeper.n_trials=0"],
    "hydra.sweeper.n_trials=0 is out of range: it must be >= 1",
)
mistake(
    "search-seed-not-a-number",
    [*SEARCH, "hparams_search=tpe", "hydra.sweeper.seed=abc"],
    "hydra.sweeper.seed='abc' has the wrong type: it must be an integer or null",
)
mistake(
    "search-interval-backwards",
    [*SEARCH, "hparams_search=random", "optimizer.lr=interval(1,0.1)"],
    "optimizer.lr=interval(1,0.1): `low <= high` must hold",
)
mistake(
    "search-interval-out-of-range",
    [*SEARCH, "hparams_search=tpe", "optimizer.lr=interval(-1,-0.5)"],
    "optimizer.lr=-1.0 (of optimizer.lr=interval(-1,-0.5)): optimizer.lr=-1.0 is out of range",
)
mistake(
    "search-interval-of-floats-for-an-integer-key",
    [*SEARCH, "hparams_search=tpe", "data.batch_size=interval(1,64)"],
    "data.batch_size takes whole numbers and an interval samples floats; "
    "write 'data.batch_size=int(interval(1,64))'",
)
mistake(
    "search-interval-of-an-unknown-key",
    [*SEARCH, "hparams_search=tpe", "optimizer.lrr=interval(1e-3,1)"],
    "error: unknown key optimizer.lrr; did you mean 'lr'? allowed keys:",
)
mistake(
    "search-choice-of-an-unknown-option",
    [*SEARCH, "hparams_search=random", "optimizer=choice(sgd,adamm)"],
    "optimizer=adamm (of optimizer=choice(sgd,adamm)): unknown optimizer 'adamm'",
)
mistake(
    "search-storage-unwritable",
    [*SEARCH, "hparams_search=random", "hydra.sweeper.storage=sqlite:////nonexistent/x.db"],
    "hydra.sweeper.storage=sqlite:////nonexistent/x.db: there is no folder /nonexistent",
)
mistake(
    "search-unknown-setting",
    [*SEARCH, "hparams_search=random", "+hydra.sweeper.n_trail=5"],
    "unknown key hydra.sweeper.n_trail; did you mean 'n_trials'?",
)


@case("search-space-changed", "optimizer.lr: the study in this sweep directory searched")
def _(cwd, run):
    import optuna

    (cwd / "sweep").mkdir()
    study = optuna.create_study(
        study_name="trainkit", storage=f"sqlite:///{cwd}/sweep/optuna.db", direction="maximize"
    )
    study.enqueue_trial({"optimizer.lr": 0.1})
    trial = study.ask({"optimizer.lr": optuna.distributions.CategoricalDistribution([0.01, 0.1])})
    study.tell(trial, 0.5)
    return [
        *SEARCH,
        "hparams_search=grid",
        "optimizer.lr=choice(0.01,0.5)",
        "hydra.sweep.dir=sweep",
    ]


@case("search-continued-with-other-overrides", "trained its trials with trainer.max_epochs=4, and")
def _(cwd, run):
    """Trials of another config (fewer epochs) would be ranked against the earlier ones."""
    import optuna

    (cwd / "sweep").mkdir()
    study = optuna.create_study(
        study_name="trainkit", storage=f"sqlite:///{cwd}/sweep/optuna.db", direction="maximize"
    )
    study.set_user_attr("fixed", ["trainer.max_epochs=4"])
    return [*SEARCH, "hparams_search=random", "hydra.sweep.dir=sweep"]


mistake(
    "unknown-objective",
    # (a class these data lack: only a job's summary.json can tell)
    [*SEARCH, "hparams_search=random", "hydra.sweeper.objectives=[val/acc,test/f1/99]"],
    "hydra.sweeper.objectives: test/f1/99 is not in a job's summary.json",
    leaves_record=True,  # the job that ran is kept
)
mistake("resume-in-sweep", ["train", "-m", "resume=x"], "resume=PATH continues one run")
mistake("resume-missing", ["train", "resume=no/such/run"], "resume=no/such/run does not exist")
mistake(
    "unicode-unquoted",
    ["train", "resume=/tmp/é/run"],
    "to pass the value as it is, quote it: \"resume='/tmp/é/run'\"",
)
mistake(
    "brackets-unquoted",
    train("hydra.run.dir=runs/(a),b"),
    "quote it: \"hydra.run.dir='runs/(a),b'\"",
)
mistake(
    "long-name",
    train("hydra.run.dir=runs/" + "a" * 300),
    "(300 bytes) is longer than the file system allows",
)
mistake("ls-unknown-group", ["ls", "optimizr"], "unknown group 'optimizr'; did you mean")
mistake("lr-plot-png", ["lr-plot", "output=lr.txt"], "output=lr.txt must end in .png")
mistake("lr-plot-key", ["lr-plot", "optimizer.lrr=1"], "unknown key optimizer.lrr")
mistake("folds-one", train("data.folds=1"), "data.folds=1 is no cross-validation")
mistake("fold-past-folds", train("data.folds=5", "data.fold=5"), "data.fold=5 must be below")
mistake("fold-without-folds", train("data.fold=2"), "data.fold=2 needs data.folds=K")
mistake(
    "folds-more-than-a-class-has",
    train("data.num_samples=40", "data.folds=30"),
    "cannot split 40 samples of 10 classes into data.folds=30 stratified folds",
)
mistake("lr-find-png", ["lr-find", "output=lr.txt"], "output=lr.txt must end in .png")
mistake("lr-find-key", ["lr-find", "optimizer.lrr=1"], "unknown key optimizer.lrr")
mistake("lr-find-min-lr", ["lr-find", "min_lr=abc"], "min_lr=abc must be a number > 0")
mistake("lr-find-range", ["lr-find", "min_lr=1", "max_lr=0.1"], "min_lr=1 must be below max_lr")
mistake("lr-find-steps", ["lr-find", "steps=3"], "steps=3: the range test needs at least 5")
mistake("lr-find-sweep", ["lr-find", "-m"], "lr-find runs one range test; -m sweeps belong")
mistake("lr-find-no-output-name", ["lr-find", "output="], "output= needs a file name")
mistake("lr-find-resume", ["lr-find", "resume=somewhere"], "leave out resume=")
mistake(
    "lr-find-diverges-at-once",
    ["lr-find", *SMALL, "min_lr=1e12", "max_lr=1e14", "steps=10"],
    "the range starts too high or climbs too fast; lower min_lr=1e+12 or max_lr=1e+14",
)
mistake("compare-nothing", ["compare"], "compare needs at least one run or sweep directory")
mistake("compare-png", ["compare", ".", "output=c.txt"], "output=c.txt must end in .png")
mistake("eval-no-checkpoint", ["eval"], "eval needs checkpoint=PATH")
mistake("eval-not-key-value", ["eval", "oops"], "eval takes KEY=VALUE arguments; got 'oops'")
mistake("eval-missing", ["eval", "checkpoint=missing.pt"], "checkpoint=missing.pt does not exist")
mistake(
    "eval-misspelt", ["eval", "checkpint=x"], "checkpint= is no option: did you mean checkpoint=?"
)
mistake("eval-folder-of-no-run", ["eval", "checkpoint=."], "checkpoint=. is a folder without best")


@case("eval-run-without-a-best", "has no checkpoints/best.pt yet; name one it has: checkpoint=")
def _(cwd, run):
    """A run stopped before its first validation keeps last.pt only."""
    stopped = copy_run(run, cwd / "stopped")
    (stopped / "checkpoints" / "best.pt").unlink()
    return ["eval", "checkpoint=stopped"]


mistake("eval-empty-checkpoint", ["eval", "checkpoint="], "checkpoint= names no file")
mistake("export-empty-checkpoint", ["export", "checkpoint="], "checkpoint= names no file")
mistake("lr-plot-sweep", ["lr-plot", "-m", "optimizer=sgd,adam"], "lr-plot plans one run; -m")
mistake("lr-plot-resume", ["lr-plot", "resume=somewhere"], "lr-plot plans a run from its overrides")


@case("resume-a-sweep-directory", "is a sweep directory; resume one of its jobs")
def _(cwd, run):
    write(cwd / "sweep" / "multirun.yaml", "hydra: {}\n")
    return ["train", "resume=sweep"]


@case("recipe-plugins-a-string", "the config names plugins=[helpers]")
def _(cwd, run):
    write(cwd / "helpers.py", "open('IMPORTED', 'w').write('code ran')\n")
    write(cwd / "rec.yaml", "# @package _global_\nplugins: helpers\n")
    return train(f"recipe={cwd / 'rec.yaml'}")


for _id, _damage, _expect in (
    ("eval-config-a-list", lambda state: state.update(config=[1, 2]), "its config is missing"),
    ("eval-config-empty", lambda state: state.update(config={}), "its config lacks trainer"),
    ("eval-no-epoch", lambda state: state.pop("epoch"), "its epoch or step is missing"),
    ("eval-no-weights", lambda state: state.pop("evaluation_model"), "its evaluation_model"),
):

    @case(_id, f"is not one trainkit wrote, or is damaged: {_expect}")
    def _(cwd, run, damage=_damage):
        state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
        damage(state)
        torch.save(state, cwd / "damaged.pt")
        return ["eval", "checkpoint=damaged.pt"]


if not torch.cuda.is_available():
    mistake("cuda-missing", train("trainer.device=cuda"), "no CUDA GPU is visible")


@case("plugin-raises", "plugins: importing 'raising_xyz' failed")
def _(cwd, run):
    write(cwd / "raising_xyz.py", "raise RuntimeError('boom')\n")
    return train("plugins=[raising_xyz]")


OUT_OF_MEMORY_MODEL = """
import torch
from trainkit.registry import MODELS

class Greedy(torch.nn.Linear):
    def forward(self, x):  # torch's words when a GPU's memory runs out
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
            "79.19 GiB of which 1.25 GiB is free. Including non-PyTorch memory, ..."
        )

@MODELS.register("greedy")
def greedy(num_classes: int, input_shape: tuple) -> torch.nn.Module:
    return Greedy(1, num_classes)
"""


@case(
    "out-of-memory",
    "out of memory on the GPU (asked for 20.00 GiB; 1.25 GiB of 79.19 GiB free); lower "
    "data.batch_size=64 (trainer.accumulate=K keeps the batch an update sees), or use "
    "trainer.precision=bf16",
    process=True,  # the plugin's model stays out of this process's registry
)
def _(cwd, run):
    write(cwd / "greedy_xyz.py", OUT_OF_MEMORY_MODEL)
    return ["train", *QUIET, "data=synthetic", "plugins=[greedy_xyz]", "model=greedy"]


@case(
    "out-of-memory-ddp", "out of memory on the GPU (asked for 20.00 GiB;", process=True, slow=True
)
def _(cwd, run):
    """(ddp-data-mistake is the default run's case with 2 processes.)"""
    write(cwd / "greedy_xyz.py", OUT_OF_MEMORY_MODEL)
    return ["train", *QUIET, "data=synthetic", "plugins=[greedy_xyz]", "model=greedy",
            "trainer.devices=2"]  # fmt: skip


@case("ddp-data-mistake", "cannot split 20 samples of 10 classes", process=True)
def _(cwd, run):
    """Found by the main process while the other waits for it: said as it is, not as the
    peer that went away."""
    return train("data.num_samples=20", "trainer.devices=2")


@case("plugin-imports-missing", "plugins: 'needs_xyz' imports 'absent_xyz', which is not")
def _(cwd, run):
    write(cwd / "needs_xyz.py", "import absent_xyz\n")
    return train("plugins=[needs_xyz]")


@case("recipe-bad-yaml", "recipe broken.yaml is not valid YAML")
def _(cwd, run):
    write(cwd / "broken.yaml", "# @package _global_\noptimizer:\n  lr: [0.1\n")
    return train("recipe=broken.yaml")


@case("recipe-not-mapping", "must be a mapping of config keys")
def _(cwd, run):
    write(cwd / "list.yaml", "- 1\n- 2\n")
    return train("recipe=list.yaml")


# --- output directories: never one that holds something ---


@case("run-dir-is-cwd-late-mistake", "they must sum to less than 1")
def _(cwd, run):
    """Once, this mistake deleted the working directory it was told to run in."""
    write(cwd / "notes.txt", "mine")
    return train("hydra.run.dir=.", "data.val_fraction=0.9", "data.test_fraction=0.2")


@case("run-dir-is-cwd", "is not empty (it holds notes.txt); name a new or empty directory")
def _(cwd, run):
    write(cwd / "notes.txt", "mine")
    return train("hydra.run.dir=.")


@case("run-dir-with-files", "is not empty (it holds other.txt)")
def _(cwd, run):
    write(cwd / "exp" / "other.txt", "mine")
    return train("hydra.run.dir=exp")


@case("run-dir-with-files-data-mistake", "is not empty")
def _(cwd, run):
    write(cwd / "exp" / "other.txt", "mine")
    return train("hydra.run.dir=exp", "data.num_samples=20")


@case("empty-run-dir-data-mistake", "cannot split 20 samples of 10 classes")
def _(cwd, run):
    """An empty directory may be used; failing, the run leaves it as empty as it was."""
    (cwd / "empty").mkdir()
    return train("hydra.run.dir=empty", "data.num_samples=20")


@case("run-dir-is-a-file", "is a file, not a directory")
def _(cwd, run):
    write(cwd / "taken", "a file")
    return train("hydra.run.dir=taken")


@case("run-dir-under-a-file", "is a file, not a directory")
def _(cwd, run):
    write(cwd / "taken", "a file")
    return train("hydra.run.dir=taken/run")


@case("outputs-is-a-file", "cannot write run directories under outputs")
def _(cwd, run):
    write(cwd / "outputs", "a file")
    return train()


@case("new-run-into-finished-run", "holds a finished run; name a new directory (to start from "
      "its weights: init_from=")  # fmt: skip
def _(cwd, run):
    """Not resume=: a finished run has nothing to resume."""
    copy_run(run, cwd / "done")
    return train("hydra.run.dir=done", "optimizer=adam")


@case("new-run-into-stopped-run", "holds a run already; continue it with `trainkit train resume=")
def _(cwd, run):
    unfinished(run, cwd / "stopped")
    return train("hydra.run.dir=stopped", "optimizer=adam")


@case("sweep-dir-not-empty", "hydra.sweep.dir=")
def _(cwd, run):
    write(cwd / "sweep" / "notes.txt", "mine")
    return ["train", "-m", *SMALL, "optimizer=adam,sgd", "hydra.sweep.dir=sweep"]


@case("sweep-dir-held-by-a-run", "holds a finished run")
def _(cwd, run):
    copy_run(run, cwd / "done")
    return ["train", "-m", *SMALL, "optimizer=adam,sgd", "hydra.sweep.dir=done"]


@case("locked-run-dir", "is being written by process 4242 on elsewhere")
def _(cwd, run):
    held = copy_run(run, cwd / "held")
    (held / "summary.json").unlink()  # an unfinished run, being resumed by someone else
    hold_lock(held, {"pid": 4242, "host": "elsewhere", "started": "2026-01-01 00:00:00"})
    return ["train", f"resume={held}"]


@case("lr-plot-existing-png", "output=mine.png exists, and trainkit does not overwrite files")
def _(cwd, run):
    write(cwd / "mine.png", b"my picture")
    return ["lr-plot", "output=mine.png"]


@case("lr-plot-output-links-to-nothing", "output=mine.png exists, and trainkit does not overwrite")
def _(cwd, run):
    (cwd / "mine.png").symlink_to(cwd / "nowhere" / "x.png")  # writing would make that file
    return ["lr-plot", "output=mine.png"]


@case("compare-a-file", "mine.png is a file; compare takes run and sweep directories")
def _(cwd, run):
    write(cwd / "mine.png", b"my picture")
    return ["compare", "mine.png"]


@case("lr-find-existing-png", "output=mine.png exists, and trainkit does not overwrite files")
def _(cwd, run):
    write(cwd / "mine.png", b"my picture")
    return ["lr-find", "output=mine.png"]


@case("lr-find-png-under-a-file", "cannot write taken/lr.png (not a directory)")
def _(cwd, run):
    write(cwd / "taken", "a file")
    return ["lr-find", "output=taken/lr.png"]  # said before the test runs, not after


@case("compare-existing-png", "output=mine.png exists, and trainkit does not overwrite files")
def _(cwd, run):
    write(cwd / "mine.png", b"my picture")
    return ["compare", str(copy_run(run, cwd / "run")), "output=mine.png"]


@case("lr-plot-png-under-a-file", "cannot write taken/lr.png (not a directory)")
def _(cwd, run):
    write(cwd / "taken", "a file")
    return ["lr-plot", "trainer.max_epochs=1", "output=taken/lr.png"]


# Hydra's settings that would put a run's files elsewhere, or two jobs in one directory.
mistake("hydra-output-subdir", train("hydra.output_subdir=.."), "hydra.output_subdir is trainkit's")
mistake(
    "hydra-log-file",
    train("hydra.job_logging.handlers.file.filename=/tmp/notes.txt"),
    "hydra.job_logging.handlers.file.filename is trainkit's to set",
)
mistake(
    "hydra-sweep-subdir",
    ["train", "-m", *SMALL, "optimizer=adam,sgd", "hydra.sweep.subdir=same"],
    "hydra.sweep.subdir is trainkit's to set",
)
mistake("hydra-chdir", train("hydra.job.chdir=true"), "hydra.job.chdir is trainkit's to set")
mistake("run-dir-interpolation", train("hydra.run.dir=d${x}"), "Interpolation key 'x' not found")
mistake(
    "run-dir-literal-interpolation",
    train("hydra.run.dir='d\\${x}'"),
    "a run directory's name cannot hold '${'",
)
mistake(
    "path-longer-than-the-system-allows",
    ["lr-plot", "output=" + "/".join(["a" * 200] * 25) + "/x.png"],
    "a name in the path is longer than the file system allows",
)
mistake(
    "checkpoint-path-too-long",
    ["eval", "checkpoint=" + "/".join(["a" * 200] * 25)],
    "a name in the path is longer than the file system allows",
)


@case("recipe-moves-the-config", "hydra.output_subdir is trainkit's to set")
def _(cwd, run):
    write(cwd / "r.yaml", "# @package _global_\nhydra:\n  output_subdir: ..\n")
    return train(f"recipe={cwd / 'r.yaml'}")


@case("recipe-names-a-plugin", "the config names plugins=[helpers] (in a recipe or a run's")
def _(cwd, run):
    write(cwd / "helpers.py", "open('IMPORTED', 'w').write('code ran')\n")
    write(cwd / "rec.yaml", "# @package _global_\nplugins: [helpers]\n")
    return train(f"recipe={cwd / 'rec.yaml'}")


@case("resume-recipe-names-a-plugin", "the config names plugins=[helpers]")
def _(cwd, run):
    write(cwd / "helpers.py", "open('IMPORTED', 'w').write('code ran')\n")
    write(cwd / "rec.yaml", "# @package _global_\nplugins: [helpers]\n")
    return resume_with_override(run, cwd, f"recipe={cwd / 'rec.yaml'}")


CALLBACK_RECIPE = """# @package _global_
hydra:
  callbacks:
    pwn:
      _target_: helpers.Callback
"""


@case("recipe-names-a-callback", "hydra.callbacks.pwn._target_=helpers.Callback names code")
def _(cwd, run):
    write(cwd / "helpers.py", "open('IMPORTED', 'w').write('code ran')\nclass Callback: pass\n")
    write(cwd / "rec.yaml", CALLBACK_RECIPE)
    return train(f"recipe={cwd / 'rec.yaml'}")


@case("resume-recipe-names-a-callback", "hydra.callbacks.pwn._target_=helpers.Callback names")
def _(cwd, run):
    write(cwd / "helpers.py", "open('IMPORTED', 'w').write('code ran')\nclass Callback: pass\n")
    notes = cwd / "run" / ".hydra" / "notes.yaml"  # a recipe in the run's own files
    args = resume_with_override(run, cwd, f"recipe={notes}")
    write(notes, CALLBACK_RECIPE)
    return args


@case("recipe-callback-of-a-trusted-module", "hydra.callbacks.pwn._target_=logging.FileHandler")
def _(cwd, run):
    """Code trainkit trusts in one place (logging.FileHandler for its log file) is not
    trusted everywhere: as a callback it would truncate any file."""
    write(cwd / "precious.txt", "precious")
    recipe = "# @package _global_\nhydra:\n  callbacks:\n    pwn:\n"
    recipe += f"      _target_: logging.FileHandler\n      filename: {cwd / 'precious.txt'}\n"
    write(cwd / "rec.yaml", recipe + "      mode: w\n")
    return train(f"recipe={cwd / 'rec.yaml'}")


@case("recipe-creates-a-callback-from-text", "makes config out of text, which may name code")
def _(cwd, run):
    write(cwd / "precious.txt", "precious")
    target = f"{{_target_:builtins.open,file:'{cwd / 'precious.txt'}',mode:w}}"
    write(
        cwd / "rec.yaml",
        f"# @package _global_\nhydra:\n  callbacks:\n    x: ${{oc.create:{target}}}\n",
    )
    return train(f"recipe={cwd / 'rec.yaml'}")


ENV_RECIPE = "# @package _global_\nhydra: {job: {env_set: {PYTHONPATH: %s}}}\n"


@case("recipe-sets-the-environment", "hydra.job.env_set.PYTHONPATH=")
def _(cwd, run):
    """A sitecustomize.py on PYTHONPATH runs in every process the run starts (DDP workers)."""
    write(cwd / "evil" / "sitecustomize.py", "open('IMPORTED', 'w').write('code ran')\n")
    write(cwd / "rec.yaml", ENV_RECIPE % (cwd / "evil"))
    return train(f"recipe={cwd / 'rec.yaml'}", "trainer.devices=2")


@case("resume-recipe-sets-the-environment", "sets the environment of the run's processes")
def _(cwd, run):
    write(cwd / "evil" / "sitecustomize.py", "open('IMPORTED', 'w').write('code ran')\n")
    write(cwd / "rec.yaml", ENV_RECIPE % (cwd / "evil"))
    return resume_with_override(run, cwd, f"recipe={cwd / 'rec.yaml'}")


@case("recipe-moves-the-log-by-the-job-name", "hydra.job.name=../../v names the run's log")
def _(cwd, run):
    write(cwd / "rec.yaml", "# @package _global_\nhydra:\n  job: {name: ../../v}\n")
    return train(f"recipe={cwd / 'rec.yaml'}")


@case("recipe-truncates-the-log", "hydra.job_logging.handlers.file.mode is trainkit's to set")
def _(cwd, run):
    handlers = "{handlers: {file: {class: logging.FileHandler, mode: w}}}"
    write(cwd / "rec.yaml", f"# @package _global_\nhydra:\n  job_logging: {handlers}\n")
    return train(f"recipe={cwd / 'rec.yaml'}")


@case("recipe-log-stream-imports", "hydra.job_logging.handlers.console.stream=ext://helpers.x")
def _(cwd, run):
    write(cwd / "helpers.py", "open('IMPORTED', 'w').write('code ran')\n")
    recipe = "# @package _global_\nhydra:\n  job_logging:\n    handlers:\n      console:\n"
    write(cwd / "rec.yaml", recipe + "        stream: ext://helpers.x\n")
    return train(f"recipe={cwd / 'rec.yaml'}")


@case("lock-file-is-a-link", "is not empty (it holds userfile)")
def _(cwd, run):
    write(cwd / "precious.txt", "precious")
    write(cwd / "d" / "userfile", "x")
    (cwd / "d" / ".trainkit.lock").symlink_to(cwd / "precious.txt")
    return train("hydra.run.dir=d")


@case("lock-file-is-a-link-in-an-empty-dir", ".trainkit.lock there is a link, not trainkit's")
def _(cwd, run):
    write(cwd / "precious.txt", "precious")
    (cwd / "d").mkdir()
    (cwd / "d" / ".trainkit.lock").symlink_to(cwd / "precious.txt")
    return train("hydra.run.dir=d")


@case("killed-before-its-first-checkpoint", "holds a run that saved no checkpoint")
def _(cwd, run):
    folder = cwd / "run"
    write(folder / ".hydra" / "overrides.yaml", "- model=mlp\n")
    write(folder / ".trainkit.lock", '{"pid": 1, "host": "gone", "started": "then"}\n')
    return train("hydra.run.dir=run")


@case("run-dir-dot-dot", "is not empty (it holds notes.txt)")
def _(cwd, run):
    write(cwd / "notes.txt", "mine")
    return train("hydra.run.dir=brandnew/..")


@case("run-dir-dangling-link", "is a link to nothing, not a directory")
def _(cwd, run):
    (cwd / "gone").symlink_to(cwd / "nowhere")
    return train("hydra.run.dir=gone")


@case("sweep-into-a-fake-study", "holds an optuna.db that is not a trainkit sweep's study")
def _(cwd, run):
    write(cwd / "u" / "optuna.db", b"")
    write(cwd / "u" / "0" / "notes.txt", "mine")
    return ["train", "-m", *SMALL, "hparams_search=random", "hydra.sweep.dir=u"]


@case(
    "cifar-batches-that-run-code", "holds objects other than arrays and plain data (posix.system)"
)
def _(cwd, run):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo code ran > IMPORTED",))

    folder = cwd / "d" / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    for name in names:
        write(folder / name, pickle.dumps(Exploit()))
    return train_mlp_on("data=cifar10", "data.root=d", "data.download=false")


@case("cifar-batch-not-a-pickle", "is not a readable CIFAR batch")
def _(cwd, run):
    folder = cwd / "d" / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        write(folder / name, b"garbage")
    return train_mlp_on("data=cifar10", "data.root=d", "data.download=false")


@case("eval-plain-pickle", "is truncated or corrupt")
def _(cwd, run):
    import pickle

    write(cwd / "raw.pt", pickle.dumps({"model": {}, "config": {}}, protocol=4))
    return ["eval", "checkpoint=raw.pt"]


@case("compare-damaged-summary", "none of these runs has a summary.json: none finished")
def _(cwd, run):
    folder = copy_run(run, cwd / "run")
    (folder / "summary.json").write_text("[]")
    return ["compare", str(folder)]


@case("eval-of-a-run-being-written", "is being written by process 4242 on elsewhere (started")
def _(cwd, run):
    """Evaluating best.pt while the run trains: eval would write into the run's folder."""
    held = copy_run(run, cwd / "held")
    hold_lock(held, {"pid": 4242, "host": "elsewhere", "started": "2026-01-01 00:00:00"})
    return ["eval", f"checkpoint={held}"]


@case("new-run-into-a-run-being-written", "is being written by process 4242 on elsewhere")
def _(cwd, run):
    """A run still training (no checkpoint yet): named as busy, not as stopped."""
    folder = cwd / "busy"
    write(folder / ".hydra" / "overrides.yaml", "- model=mlp\n")
    hold_lock(folder, {"pid": 4242, "host": "elsewhere", "started": "2026-01-01 00:00:00"})
    return train("hydra.run.dir=busy")


# --- data: found when the data is read; the directory made for the run goes again ---


@case("monitor-not-logged", "trainer.monitor='val/auroc' is not a logged metric")
def _(cwd, run):  # (a binary run's: these data have 10 classes)
    return train("trainer.monitor=val/auroc")


mistake("depth-not-6n2", ["train", "model=resnet_cifar", "model.depth=9", *QUIET],
        "model.depth=9 is not 6n+2; use 8, 14, 20, 32, 44, 56 or 110")  # fmt: skip
mistake("ema-decay-above-one", train("regularization=[ema]", "regularization.ema.decay=2"),
        "regularization.ema.decay=2 is out of range: it must be > 0 and < 1")  # fmt: skip


@case("too-few-to-stratify", "cannot split 20 samples of 10 classes")
def _(cwd, run):
    return train("data.num_samples=20")


@case("on-device-rotation", "data.on_device=true augments on the device with RandomCrop")
def _(cwd, run):
    return train_mlp_on("data=digits", "augmentation=digits", "data.on_device=true")


mistake("warmup-before-a-schedule-with-its-own", train("scheduler=inverse_sqrt",
        "scheduler.warmup_epochs=1"), "scheduler=inverse_sqrt warms up by itself")  # fmt: skip
mistake("mixup-for-regression", train_mlp_on("data=diabetes", "regularization=[mixup]"),
        "regularization.mixup mixes class labels, and task=regression has none")  # fmt: skip


@case("augmentation-crop-larger-than-images", "augmentation=pipeline fails on this data's first")
def _(cwd, run):
    return train_mlp_on("data=digits", "augmentation=pipeline",
                        "augmentation.steps=[{name: RandomCrop, size: 12}]")  # fmt: skip


@case("augmentation-makes-three-channels", "turns this data's samples into shape (3, 8, 8)")
def _(cwd, run):
    step = "{name: Normalize, mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2]}"
    return train_mlp_on("data=digits", "augmentation=pipeline", f"augmentation.steps=[{step}]")


@case("mixup-of-features", "regularization.mixup mixes images, and this data's inputs are not")
def _(cwd, run):
    return train_mlp_on("data=breast_cancer", "regularization=[mixup]")


@case("mixup-without-cross-entropy", "mixes targets into class probabilities")
def _(cwd, run):
    return train("regularization=[mixup]", "loss=nll")


@case("drop-path-on-mlp", "needs a model with a drop_path parameter")
def _(cwd, run):
    return train("regularization=[drop_path]")


@case("text-path-a-folder", "data.path=texts is a folder; name the CSV, TSV or JSONL file in it")
def _(cwd, run):
    (cwd / "texts").mkdir()
    return train_mlp_on("data=text_csv", "data.path=texts")


@case("text-missing-file", "data.path=reviews.csv: no such file")
def _(cwd, run):
    return train_mlp_on("data=text_csv", "data.path=reviews.csv")


@case("text-not-utf8", "is not utf-8 text: byte 0xff at offset 16 (line 2)")
def _(cwd, run):
    write(cwd / "bad.csv", b"text,label\nhello\xff\xfe world,a\nbye,b\n")
    return train_mlp_on("data=text_csv", "data.path=bad.csv")


@case("text-unknown-encoding", "data.encoding='nope' is not an encoding Python knows")
def _(cwd, run):
    write(cwd / "t.csv", "text,label\na,x\nb,y\n")
    return train_mlp_on("data=text_csv", "data.path=t.csv", "data.encoding=nope")


@case("text-missing-column", "data.text_column='text' is not a column of t.csv")
def _(cwd, run):
    write(cwd / "t.csv", "words,label\na,x\nb,y\n")
    return train_mlp_on("data=text_csv", "data.path=t.csv")


@case("text-read-by-an-mlp", "model mlp reads numbers, and data=text_csv gives the token ids")
def _(cwd, run):
    write(cwd / "t.csv", "text,label\n" + "".join(f"word {i},{i % 2}\n" for i in range(40)))
    return train_mlp_on("data=text_csv", "data.path=t.csv")


@case("text-empty-file", "data.path=t.csv is empty: it has no rows")
def _(cwd, run):
    write(cwd / "t.csv", "text,label\n")
    return train_mlp_on("data=text_csv", "data.path=t.csv")


@case("text-suffix", "unknown file type '.txt'; use .csv, .tsv or .jsonl")
def _(cwd, run):
    write(cwd / "t.txt", "text,label\n")
    return train_mlp_on("data=text_csv", "data.path=t.txt")


@case("jsonl-bad-line", "data.path=t.jsonl: line 2 is not JSON")
def _(cwd, run):
    write(cwd / "t.jsonl", '{"text": "a", "label": "x"}\n{oops\n')
    return train_mlp_on("data=text_csv", "data.path=t.jsonl")


@case("jsonl-not-object", "data.path=t.jsonl: line 1 is not a JSON object")
def _(cwd, run):
    write(cwd / "t.jsonl", "[1, 2]\n")
    return train_mlp_on("data=text_csv", "data.path=t.jsonl")


@case("text-one-label", "the train split has one label ('x')")
def _(cwd, run):
    write(cwd / "t.csv", "text,label\n" + "".join(f"w{i},x\n" for i in range(40)))
    return train_mlp_on("data=text_csv", "data.path=t.csv")


@case("text-missing-label", "row 1 has no value in column 'label'")
def _(cwd, run):
    write(cwd / "t.csv", "text,label\na,x\nb,\n")
    return train_mlp_on("data=text_csv", "data.path=t.csv")


@case("text-val-label-unseen", "label 'z' is not in the train split")
def _(cwd, run):
    rows = "".join(f"w{i},{'xy'[i % 2]}\n" for i in range(40))
    write(cwd / "t.csv", "text,label\n" + rows)
    write(cwd / "v.csv", "text,label\na,z\n")
    return train_mlp_on("data=text_csv", "data.path=t.csv", "data.val_path=v.csv")


@case("images-missing-root", "data imagefolder: there is no directory images")
def _(cwd, run):
    return train_mlp_on(
        "data=imagefolder", "data.root=images", "data.image_size=32", "data.resize=36"
    )


@case("images-one-class", "has one class folder (class_0); classification needs at least 2")
def _(cwd, run):
    from tests.fake_images import make_imagefolder

    make_imagefolder(cwd / "images", classes=1, per_class=5)
    return train_mlp_on(
        "data=imagefolder", "data.root=images", "data.image_size=32", "data.resize=36"
    )


@case("folds-with-a-given-val-split", "data.folds=3: data=imagefolder does not carve its val")
def _(cwd, run):
    from tests.fake_images import make_imagefolder

    # train/, val/ and test/: val is given, not carved (without test/, val/ would be test)
    make_imagefolder(cwd / "images", classes=2, per_class=6, splits=("train", "val", "test"))
    return train_mlp_on(
        "data=imagefolder", "data.root=images", "data.image_size=32", "data.resize=36",
        "data.folds=3", "data.num_workers=0",
    )  # fmt: skip


@case("images-no-classes", "images/train has no class folders")
def _(cwd, run):
    (cwd / "images" / "train").mkdir(parents=True)
    return train_mlp_on(
        "data=imagefolder", "data.root=images", "data.image_size=32", "data.resize=36"
    )


@case("images-resize-below-size", "data.resize=16 is below data.image_size=32")
def _(cwd, run):
    return train_mlp_on(
        "data=imagefolder", "data.root=images", "data.image_size=32", "data.resize=16"
    )


@case("images-no-val", "has train/ but neither val/ nor test/")
def _(cwd, run):
    from tests.fake_images import make_imagefolder

    make_imagefolder(cwd / "images", classes=2, per_class=5, splits=("train",))
    return train_mlp_on(
        "data=imagefolder", "data.root=images", "data.image_size=32", "data.resize=36"
    )


@case("download-offline", "data cifar10:")
def _(cwd, run):
    return train_mlp_on("data=cifar10", "data.root=nowhere", "data.download=false")


# --- checkpoints: data, never code ---


class Payload:
    """Unpickling this under a full (not weights-only) load would build an arbitrary object."""


@case("eval-garbage", "checkpoint best.pt is not a PyTorch file (a .pt file torch.save wrote)")
def _(cwd, run):
    write(cwd / "best.pt", b"not a checkpoint at all\n" * 10)
    return ["eval", "checkpoint=best.pt"]


@case("eval-empty-file", "checkpoint best.pt is not a PyTorch file")
def _(cwd, run):
    write(cwd / "best.pt", b"")
    return ["eval", "checkpoint=best.pt"]


@case("eval-truncated", "is truncated or corrupt")
def _(cwd, run):
    data = (run / "checkpoints" / "best.pt").read_bytes()
    write(cwd / "best.pt", data[: len(data) // 2])
    return ["eval", "checkpoint=best.pt"]


@case("eval-objects", "holds objects other than tensors and plain data; trainkit never runs")
def _(cwd, run):
    torch.save({"model": {}, "config": {}, "payload": Payload()}, cwd / "best.pt")
    return ["eval", "checkpoint=best.pt"]


@case("eval-not-trainkit", "is not a trainkit checkpoint (no model or config)")
def _(cwd, run):
    torch.save({"weights": torch.zeros(2)}, cwd / "best.pt")
    return ["eval", "checkpoint=best.pt"]


@case("eval-plugin-in-checkpoint", "was trained with plugins=[helpers], and trainkit imports only")
def _(cwd, run):
    """A downloaded model folder: best.pt names a plugin, and helpers.py is beside it. The
    module must not be imported (it would write a marker file)."""
    folder = cwd / "download"
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["plugins"] = ["helpers"]
    folder.mkdir()
    torch.save(state, folder / "best.pt")
    write(folder / "helpers.py", "open('IMPORTED', 'w').write('code ran')\n")
    write(cwd / "helpers.py", "open('IMPORTED', 'w').write('code ran')\n")
    return ["eval", f"checkpoint={folder / 'best.pt'}"]


@case("eval-other-model", "does not fit model mlp: 1.weight is (16, 64) in the checkpoint and")
def _(cwd, run):
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["model"]["hidden"] = [32]
    torch.save(state, cwd / "best.pt")
    return ["eval", "checkpoint=best.pt"]


@case("eval-unknown-key", "unknown key foo: the checkpoint's config has no such key")
def _(cwd, run):
    copy_run(run, cwd / "run")
    return ["eval", "checkpoint=run", "foo=1"]


@case("eval-output-is-a-file", "output_dir=")
def _(cwd, run):
    copy_run(run, cwd / "run")
    write(cwd / "out", "a file")
    return ["eval", "checkpoint=run", "output_dir=out"]


@case("eval-output-not-empty", "is not empty (it holds mine.txt)")
def _(cwd, run):
    copy_run(run, cwd / "run")
    write(cwd / "out" / "mine.txt", "mine")
    return ["eval", "checkpoint=run", "output_dir=out"]


@case("eval-output-under-a-file", "is a file, not a directory")
def _(cwd, run):
    copy_run(run, cwd / "run")
    write(cwd / "out", "a file")
    return ["eval", "checkpoint=run", "output_dir=out/eval"]


# --- after training: predict, export, fine-tuning ---


def arrays(path: Path, *shape: int) -> Path:
    """An .npy file of ``shape`` (the finished run's model takes (1, 8, 8))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.zeros(shape, dtype=np.float32))
    return path


mistake("predict-no-input", ["predict", "checkpoint=run"],
        "predict needs checkpoint=PATH (or model=FILE.onnx) and input=PATH")  # fmt: skip
mistake("predict-both-models", ["predict", "checkpoint=run", "model=m.onnx", "input=x.npy"],
        "predict takes checkpoint=PATH or model=FILE.onnx, not both")  # fmt: skip
mistake("predict-unknown-option", ["predict", "checkpoint=run", "input=x", "topk5"],
        "predict: 'topk5' is not an option")  # fmt: skip
mistake("predict-no-checkpoint", ["predict", "checkpoint=nowhere", "input=x.npy"],
        "checkpoint=nowhere does not exist")  # fmt: skip
mistake("predict-no-onnx-file", ["predict", "model=nowhere.onnx", "input=x.npy"],
        "model=nowhere.onnx: no such file")  # fmt: skip


@case("predict-no-such-input", "input=nothing.png: no such file or directory")
def _(cwd, run):
    return ["predict", f"checkpoint={run}", "input=nothing.png"]


@case("predict-empty-folder", "input=empty holds no files this model reads (.npy)")
def _(cwd, run):
    (cwd / "empty").mkdir()
    write(cwd / "empty" / "notes.txt", "not an array")
    return ["predict", f"checkpoint={run}", "input=empty"]


@case("predict-nothing-readable", "no input could be read, 3 tried (first: bad.npy:0: an array")
def _(cwd, run):
    arrays(cwd / "bad.npy", 3, 5)
    return ["predict", f"checkpoint={run}", "input=bad.npy"]


@case("predict-bad-input-error", "bad.npy:0: an array of shape (5,); the model takes (1, 8, 8)")
def _(cwd, run):
    arrays(cwd / "ok.npy", 2, 1, 8, 8)
    arrays(cwd / "bad.npy", 3, 5)
    return ["predict", f"checkpoint={run}", "input=ok.npy", "input=bad.npy", "on_bad_input=error"]


@case("predict-empty-input", "input= names no file or folder; give input=PATH")
def _(cwd, run):
    arrays(cwd / "ok.npy", 2, 1, 8, 8)  # what input= (the current directory) would predict
    return ["predict", f"checkpoint={run}", "input="]


@case("predict-complex-array", "(first: c.npy: an array of complex128 values, not real numbers)")
def _(cwd, run):
    np.save(cwd / "c.npy", np.zeros((2, 1, 8, 8), dtype=np.complex128))
    return ["predict", f"checkpoint={run}", "input=c.npy"]


@case("predict-damaged-description", "its data description is damaged (2 class_names for num")
def _(cwd, run):
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["data"]["class_names"] = state["data"]["class_names"][:2]
    torch.save(state, cwd / "damaged.pt")
    arrays(cwd / "ok.npy", 2, 1, 8, 8)
    return ["predict", "checkpoint=damaged.pt", "input=ok.npy"]


@case("predict-output-suffix", "output=mine.txt must end in .csv or .jsonl")
def _(cwd, run):
    arrays(cwd / "ok.npy", 2, 1, 8, 8)
    write(cwd / "mine.txt", "mine")
    return ["predict", f"checkpoint={run}", "input=ok.npy", "output=mine.txt"]


for _id, _option, _expect in (
    ("predict-topk-zero", "topk=0", "topk=0 must be a whole number >= 1"),
    ("predict-batch-negative", "batch_size=-1", "batch_size=-1 must be a whole number >= 1"),
    ("predict-topk-superscript", "topk=²", "topk=² must be a whole number >= 1"),
    ("predict-tta-unknown", "tta=vflip", "tta=vflip: use tta=none or tta=hflip"),
    ("predict-tta-not-images", "tta=hflip", "tta=hflip flips images; this model reads array"),
    ("predict-on-bad-input", "on_bad_input=ignore", "on_bad_input=ignore"),
    ("predict-not-a-device", "device=gpu", "device='gpu' is not a device; use auto, cpu or cuda"),
    ("predict-meta-device", "device=meta", "device='meta' is not a device trainkit runs on"),
    ("predict-gpu-number", "device=cuda:64", "device=cuda:64 but"),
):

    @case(_id, _expect)
    def _(cwd, run, option=_option):
        arrays(cwd / "ok.npy", 2, 1, 8, 8)
        return ["predict", f"checkpoint={run}", "input=ok.npy", option]


@case("predict-onnx-not-onnx", "model=model.png: predict runs .onnx files that export wrote")
def _(cwd, run):
    arrays(cwd / "ok.npy", 2, 1, 8, 8)
    write(cwd / "model.png", b"not a model")
    return ["predict", "model=model.png", "input=ok.npy"]


@case("predict-onnx-device", "device=cuda: an .onnx model runs on the CPU; leave device out")
def _(cwd, run):
    arrays(cwd / "ok.npy", 2, 1, 8, 8)
    write(cwd / "model.onnx", b"\x08\x07")
    return ["predict", "model=model.onnx", "input=ok.npy", "device=cuda"]


@case("predict-onnx-not-ours", "is not an ONNX file that trainkit export wrote")
def _(cwd, run):
    arrays(cwd / "ok.npy", 2, 1, 8, 8)
    write(cwd / "model.onnx", b"\x08\x07")  # a valid ONNX header and nothing else
    return ["predict", "model=model.onnx", "input=ok.npy"]


@case("predict-onnx-damaged", "is not an ONNX file that trainkit export wrote (it cannot be read")
def _(cwd, run):
    arrays(cwd / "ok.npy", 2, 1, 8, 8)
    write(cwd / "model.onnx", b"not onnx")
    return ["predict", "model=model.onnx", "input=ok.npy"]


for _id, _metadata in (
    ("predict-onnx-metadata-not-json", "{damaged"),
    ("predict-onnx-metadata-without-task", '{"loss": {}, "data": {}}'),
    ("predict-onnx-metadata-task-a-word", '{"task": "classification", "loss": {}}'),
):

    @case(_id, "is not an ONNX file that trainkit export wrote (its trainkit metadata is damaged)")
    def _(cwd, run, metadata=_metadata):
        import onnx

        arrays(cwd / "ok.npy", 2, 1, 8, 8)
        model = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
        model.metadata_props.add(key="trainkit", value=metadata)
        onnx.save(model, str(cwd / "model.onnx"))
        return ["predict", "model=model.onnx", "input=ok.npy"]


def onnx_with_our_metadata(cwd, run, input="input", batch="N", classes=None, outputs=1):
    """A graph with the finished run's trainkit metadata that does not fit it (export's file
    replaced or edited afterwards): Flatten, then MatMul to ``classes`` outputs."""
    import onnx
    from onnx import TensorProto, helper

    from trainkit import __version__, checkpoint

    state = checkpoint.load(run / "checkpoints" / "best.pt")
    classes = classes or state["data"]["num_classes"]
    weights = helper.make_tensor("w", TensorProto.FLOAT, [64, classes], [0.0] * (64 * classes))
    nodes = [
        helper.make_node("Flatten", [input], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["out0"]),
        *(helper.make_node("Identity", ["out0"], [f"out{i}"]) for i in range(1, outputs)),
    ]
    graph = helper.make_graph(
        nodes,
        "replaced",
        [helper.make_tensor_value_info(input, TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, None) for i in range(outputs)],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {
        "trainkit": __version__,
        "task": state["config"]["task"],
        "loss": state["config"]["loss"],
        "data": state["data"],
        "input": {"name": "input", "dtype": "float32"},
    }
    model.metadata_props.add(key="trainkit", value=json.dumps(metadata))
    onnx.save(model, str(cwd / "model.onnx"))
    arrays(cwd / "ok.npy", 3, 1, 8, 8)
    return ["predict", "model=model.onnx", "input=ok.npy"]


for _id, _graph, _expect in (
    ("predict-onnx-input-renamed", {"input": "x"}, "its graph takes ['x'] and gives 1 output(s)"),
    ("predict-onnx-two-outputs", {"outputs": 2}, "its graph takes ['input'] and gives 2 output"),
    ("predict-onnx-fixed-batch", {"batch": 1}, "onnxruntime cannot run its graph on (3, 1, 8, 8)"),
    ("predict-onnx-other-width", {"classes": 5}, "its graph gives 5 outputs per sample, and the"),
):

    @case(_id, _expect)
    def _(cwd, run, graph=_graph):
        return onnx_with_our_metadata(cwd, run, **graph)


for _id, _override, _expect in (
    ("eval-a-recut-split", "data.seed=7", "the run's test split would be cut anew, and take in"),
    ("eval-test-fraction", "data.test_fraction=0.5", "the run's test split would be cut anew"),
    ("eval-resume", "resume=run", "resume only changes training; leave it out"),
    ("eval-optimizer-lr", "optimizer.lr=5", "optimizer.lr only changes training; leave it out"),
):

    @case(_id, _expect)
    def _(cwd, run, override=_override):
        return ["eval", f"checkpoint={run}", override, "output_dir=e"]


def nan_weights(cwd: Path, run: Path) -> None:
    """nan.pt: the finished run's best checkpoint with every weight NaN."""
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    for tensor in state["evaluation_model"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    torch.save(state, cwd / "nan.pt")


@case("export-nan-weights", "its model's outputs on 8 of the run's test inputs are not finite")
def _(cwd, run):
    """It said 'differs from the PyTorch model by nan (at most nan allowed)'."""
    nan_weights(cwd, run)
    return ["export", "checkpoint=nan.pt", "format=torch_export"]


@case("predict-nan-weights", "nan.pt: the model's outputs are not finite numbers (on ok.npy:0")
def _(cwd, run):
    """It wrote rows of nan, with exit 0."""
    nan_weights(cwd, run)
    arrays(cwd / "ok.npy", 2, 1, 8, 8)
    return ["predict", "checkpoint=nan.pt", "input=ok.npy", "output=p.csv"]


# A key given twice: the last one winning would drop a checkpoint, an output or a setting.
mistake("predict-checkpoint-twice", ["predict", "checkpoint=a", "checkpoint=b", "input=x.npy"],
        "predict: checkpoint= is given twice (a and b); give it once")  # fmt: skip
mistake("eval-output-dir-twice", ["eval", "checkpoint=a", "output_dir=e1", "output_dir=e2"],
        "eval: output_dir= is given twice (e1 and e2); give it once")  # fmt: skip
mistake("export-output-twice", ["export", "checkpoint=a", "output=a.onnx", "output=b.onnx"],
        "export: output= is given twice")  # fmt: skip
mistake("lr-find-steps-twice", ["lr-find", "steps=10", "steps=20"],
        "lr-find: steps= is given twice (10 and 20)")  # fmt: skip
mistake("lr-plot-output-twice", ["lr-plot", "output=a.png", "output=b.png"],
        "lr-plot: output= is given twice")  # fmt: skip
mistake("compare-metrics-twice", ["compare", ".", "metrics=val/acc", "metrics=test/acc"],
        "compare: metrics= is given twice")  # fmt: skip
mistake("export-opset-of-torch-export",
        ["export", "checkpoint=a", "format=torch_export", "opset=17"],
        "opset=17 is ONNX's; format=torch_export takes none")  # fmt: skip


@case("predict-beyond-float32", "big.npy:0: a value is not a finite number", process=True)
def _(cwd, run):
    """1e39 fits float64, not the model's float32: refused without numpy's warning."""
    np.save(cwd / "big.npy", np.full((2, 1, 8, 8), 1e39))
    return ["predict", f"checkpoint={run}", "input=big.npy", "on_bad_input=error"]


@case("predict-a-number-for-an-array", "an array of shape (); this model's samples have shape")
def _(cwd, run):
    np.save(cwd / "one.npy", np.float32(3))
    return ["predict", f"checkpoint={run}", "input=one.npy", "on_bad_input=error"]


@case("eval-an-exported-program", "model.pt2 is a torch.export program (.pt2), not a checkpoint")
def _(cwd, run):
    import zipfile

    with zipfile.ZipFile(cwd / "model.pt2", "w") as archive:  # as torch.export.save lays it out
        archive.writestr("archive/archive_format", "pt2")
        archive.writestr("archive/models/model.json", "{}")
    return ["eval", "checkpoint=model.pt2"]


mistake("export-unknown-format", ["export", "checkpoint=run", "format=tflite"],
        "format=tflite: use format=onnx or format=torch_export")  # fmt: skip
mistake("export-no-checkpoint", ["export", "checkpoint=nowhere", "format=onnx"],
        "checkpoint=nowhere does not exist")  # fmt: skip


@case("export-output-suffix", "output=mine.json: format=onnx writes a .onnx file")
def _(cwd, run):
    write(cwd / "mine.json", "{}")
    return ["export", f"checkpoint={run}", "format=onnx", "output=mine.json"]


@case("export-opset-unavailable", "opset=3: torch's ONNX exporter could not write model mlp")
def _(cwd, run):
    return ["export", f"checkpoint={run}", "format=onnx", "opset=3", "output=m.onnx"]


@case("export-opset-not-a-number", "opset=")
def _(cwd, run):
    return ["export", f"checkpoint={run}", "format=onnx", "opset=new"]


@case("export-objects", "holds objects other than tensors and plain data")
def _(cwd, run):
    torch.save({"model": {}, "config": {}, "payload": Payload()}, cwd / "best.pt")
    return ["export", "checkpoint=best.pt", "format=torch_export"]


mistake("init-from-nowhere", train("init_from=nowhere"),
        "init_from=nowhere: no such file or run directory")  # fmt: skip
mistake("finetune-unknown-key", train("finetune.freez=[1.*]"), "unknown key finetune.freez")
mistake("finetune-freeze-everything", train("finetune.freeze=[*]"),
        "finetune.freeze=[*] freezes every parameter")  # fmt: skip
mistake("finetune-freeze-not-a-list", train("finetune.freeze=1.*"),
        "finetune.freeze='1.*' has the wrong type: it must be a list in brackets: "
        "finetune.freeze=[1.*]")  # fmt: skip
mistake("finetune-freeze-matches-nothing", train("finetune.freeze=[stem.*]"),
        "finetune.freeze: pattern 'stem.*' matches no parameter")  # fmt: skip
mistake("finetune-unfreeze-negative", train("finetune.unfreeze_at_epoch=-1"),
        "finetune.unfreeze_at_epoch=-1 is out of range: it must be >= 0")  # fmt: skip
mistake("finetune-unfreeze-nothing", train("finetune.unfreeze_at_epoch=2"),
        "finetune.unfreeze_at_epoch=2 unfreezes nothing: finetune.freeze is empty")  # fmt: skip
mistake("layer-decay-zero", train("optimizer.layer_decay=0"),
        "optimizer.layer_decay=0 is out of range: it must be > 0 and <= 1")  # fmt: skip
mistake("class-weights-count", train("loss.class_weights=[1,2]"),
        "loss.class_weights has 2 entries but the data has 10 classes")  # fmt: skip
mistake("class-weights-word", train("loss.class_weights=heavy"),
        "loss.class_weights='heavy' has the wrong type")  # fmt: skip
mistake("class-weights-negative", train("loss.class_weights=[1,1,1,1,1,1,1,1,1,-1]"),
        "loss.class_weights[9]=-1 is out of range: it must be >= 0")  # fmt: skip
mistake("sampler-unknown", train("data.sampler=random"),
        "data.sampler='random' is not a choice; choices: 'shuffle'")  # fmt: skip
mistake("sampler-balanced-regression", train_mlp_on("data=diabetes", "data.sampler=balanced"),
        "data.sampler=balanced draws each class equally often, and this data's")  # fmt: skip


@case("init-from-garbage", "init_from=weights.pt is not a PyTorch file")
def _(cwd, run):
    write(cwd / "weights.pt", b"garbage" * 10)
    return train("init_from=weights.pt")


@case("init-from-objects", "init_from=weights.pt holds objects other than tensors and plain data")
def _(cwd, run):
    torch.save({"evaluation_model": Payload()}, cwd / "weights.pt")
    return train("init_from=weights.pt")


@case("init-from-no-state-dict", "init_from=weights.pt holds no state dict")
def _(cwd, run):
    torch.save({"lr": 0.1}, cwd / "weights.pt")
    return train("init_from=weights.pt")


@case("init-from-another-model", "none of its 4 tensors fits this model (1.weight is (16, 64)")
def _(cwd, run):
    return train("model.hidden=[8,8]", f"init_from={run}")


@case("init-from-plugin-in-checkpoint", "none of its")
def _(cwd, run):
    """init_from reads tensors only: a plugin its checkpoint names is never imported."""
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["plugins"] = ["helpers"]
    torch.save(state, cwd / "best.pt")
    write(cwd / "helpers.py", "open('IMPORTED', 'w').write('code ran')\n")
    return train("model.hidden=[4]", "data.num_classes=3", "init_from=best.pt")


# --- resume: checked against its run before anything of it is touched ---


def unfinished(run: Path, to: Path) -> Path:
    """A copy of ``run`` as if it had been stopped after its last checkpoint."""
    copy_run(run, to)
    (to / "summary.json").unlink()
    return to


@case("resume-changed-epochs", "resume: the config differs from the run's (trainer.max_epochs: 2")
def _(cwd, run):
    return ["train", f"resume={unfinished(run, cwd / 'run')}", "trainer.max_epochs=60"]


@case("resume-in-a-search", "resume=PATH continues one run; it cannot be part of a sweep")
def _(cwd, run):  # hparams_search= sweeps without -m
    folder = unfinished(run, cwd / "run")
    return ["train", "hparams_search=random", "hydra.sweeper.n_trials=1", f"resume={folder}"]


def planted_link(run: Path, cwd: Path, name: str, hard: bool = False) -> list[str]:
    """Resume a copy of ``run`` whose ``name`` is a link to a file of the user's."""
    folder = unfinished(run, cwd / "run")
    victim = write(cwd / "victim.txt", "the user's")
    (folder / name).unlink(missing_ok=True)
    if hard:
        os.link(victim, folder / name)
    else:
        (folder / name).symlink_to(victim)
    return ["train", f"resume={folder}"]


@case("resume-predictions-link", "predictions.csv is a link, and a run trainkit wrote has none")
def _(cwd, run):
    return planted_link(run, cwd, "predictions.csv")


@case("resume-log-link", "train.log is a link, and a run trainkit wrote has none")
def _(cwd, run):
    return planted_link(run, cwd, "train.log")


@case("resume-config-link", ".hydra/config.yaml is a link, and a run trainkit wrote has none")
def _(cwd, run):
    return planted_link(run, cwd, ".hydra/config.yaml")


@case("resume-log-hard-link", "train.log has other names (hard links), and the run appends")
def _(cwd, run):
    return planted_link(run, cwd, "train.log", hard=True)


@case("resume-lock-hard-link", ".trainkit.lock there has other names (hard links)")
def _(cwd, run):
    return planted_link(run, cwd, ".trainkit.lock", hard=True)


@case("resume-file-changed-lr", "(optimizer.lr: 0.1 -> 0.5)")
def _(cwd, run):
    path = unfinished(run, cwd / "run") / "checkpoints" / "last.pt"
    return ["train", f"resume={path}", "optimizer.lr=0.5"]


@case("resume-beside-hydra", "(optimizer.lr: 0.1 -> 0.5)")
def _(cwd, run):
    """A checkpoint beside .hydra/ (no checkpoints/ folder): refusing it deletes nothing."""
    folder = unfinished(run, cwd / "run")
    for path in (folder / "checkpoints").iterdir():
        path.rename(folder / path.name)
    (folder / "checkpoints").rmdir()
    return ["train", f"resume={folder / 'last.pt'}", "optimizer.lr=0.5"]


@case(
    "resume-finished", "has finished (its test metrics are in summary.json); nothing to", status=0
)
def _(cwd, run):
    return ["train", f"resume={copy_run(run, cwd / 'run')}"]


@case("resume-no-hydra", ".hydra/overrides.yaml is missing; resume needs the run directory")
def _(cwd, run):
    folder = unfinished(run, cwd / "run")
    shutil.rmtree(folder / ".hydra")
    return ["train", f"resume={folder}"]


@case("resume-plugin-in-overrides", "the run was trained with plugins=[helpers], and trainkit")
def _(cwd, run):
    write(cwd / "helpers.py", "open('IMPORTED', 'w').write('code ran')\n")
    return resume_with_override(run, cwd, "plugins=[helpers]")


@case("resume-corrupt-last", "is truncated or corrupt")
def _(cwd, run):
    folder = unfinished(run, cwd / "run")
    (folder / "checkpoints" / "last.pt").write_bytes(b"\x80\x02garbage")
    return ["train", f"resume={folder}"]


@case("resume-objects", "holds objects other than tensors and plain data")
def _(cwd, run):
    folder = unfinished(run, cwd / "run")
    torch.save({"model": {}, "config": {}, "x": Payload()}, folder / "checkpoints" / "last.pt")
    return ["train", f"resume={folder}"]


@case("resume-overrides-not-a-list", ".hydra/overrides.yaml is not a list of overrides")
def _(cwd, run):
    folder = unfinished(run, cwd / "run")
    (folder / ".hydra" / "overrides.yaml").write_text("a: 1\n")
    return ["train", f"resume={folder}"]


@case("resume-special-path-changed", "resume: the config differs from the run's")
def _(cwd, run):
    folder = unfinished(run, cwd / "it's a (run), ${x} #1 é")
    from trainkit.overrides import override

    return ["train", override("resume", str(folder)), "trainer.max_epochs=60"]


# --- sweeps: failed jobs are counted, and the exit status says so ---


@case("sweep-all-jobs-fail", "2 of 2 jobs failed; why:", status=1, leaves_record=True)
def _(cwd, run):
    return ["train", "-m", *SMALL, "trainer.max_epochs=1", "data.num_samples=20,21"]


@case("sweep-one-job-fails", "1 of 2 jobs failed; why:", status=1, leaves_record=True)
def _(cwd, run):
    return ["train", "-m", *SMALL, "trainer.max_epochs=1", "data.num_samples=200,20"]


mistake(
    "sweep-bad-value-in-a-job",
    ["train", "-m", *SMALL, "optimizer.lr=0.1,-1"],
    "sweep job 1 (optimizer.lr=-1): optimizer.lr=-1 is out of range: it must be > 0",
)
mistake(
    "sweep-unknown-key-in-a-job",
    ["train", "-m", *SMALL, "optimizer.lrr=0.1,0.2"],
    "sweep job 0 (optimizer.lrr=0.1): unknown key optimizer.lrr; did you mean 'lr'?",
)
mistake(
    "sweep-combination-in-every-job",
    ["train", "-m", *SMALL, "regularization=[drop_path]", "optimizer=adam,sgd"],
    "sweep job 0 (optimizer=adam): regularization.drop_path needs a model with a drop_path",
)
mistake(
    "sweep-range-without-search",
    ["train", "-m", *SMALL, "optimizer.lr=interval(0.1,1)"],
    "for ranges (interval, tag(log, ...)) use hparams_search=random or hparams_search=tpe",
)
mistake(
    "two-spellings-of-dropout",
    train("model.dropout=0.2", "regularization=[dropout]"),
    "regularization.dropout sets model.dropout=0.5 and model.dropout=0.2 is set too; keep one",
)
mistake(
    "two-spellings-of-weight-decay",
    train("optimizer.weight_decay=0.01", "regularization=[weight_decay]"),
    "sets optimizer.weight_decay=0.0005 and optimizer.weight_decay=0.01 is set too",
)


@case("sweep-unknown-option-in-a-job", "sweep job 0 (optimizer=adamm): unknown optimizer 'adamm'")
def _(cwd, run):
    return ["train", "-m", *SMALL, "trainer.max_epochs=1", "optimizer=adamm,sgd"]


# Mistakes found only as the run is built, in the run directory, which is then removed again
# (its parent's modification time changes). Every other mistake is found before any
# directory is made or touched.
FOUND_IN_RUN = {
    # in the data (its files, its size, its classes)
    "cifar-batch-not-a-pickle", "cifar-batches-that-run-code", "download-offline",
    "empty-run-dir-data-mistake", "folds-more-than-a-class-has", "folds-with-a-given-val-split",
    "images-missing-root", "images-no-classes", "images-no-val", "images-one-class",
    "images-resize-below-size", "jsonl-bad-line", "jsonl-not-object", "text-empty-file",
    "text-missing-column", "text-missing-file", "text-missing-label", "text-not-utf8",
    "text-one-label", "text-path-a-folder", "text-suffix", "text-unknown-encoding",
    "text-val-label-unseen", "too-few-to-stratify", "ddp-data-mistake",
    # in what the data is: its number of classes, its kind of target, its tokens
    "class-weights-count", "monitor-not-logged", "sampler-balanced-regression",
    "text-read-by-an-mlp", "mixup-of-features",
    # in a checkpoint's contents, or the model built from it
    "eval-other-model", "finetune-freeze-everything", "finetune-freeze-matches-nothing",
    "init-from-another-model", "init-from-garbage", "init-from-no-state-dict",
    "init-from-nowhere", "init-from-objects", "init-from-plugin-in-checkpoint",
    # in the machine (its memory)
    "out-of-memory", "out-of-memory-ddp",
    # in the built augmentation, on the data's images
    "on-device-rotation", "augmentation-crop-larger-than-images",
    "augmentation-makes-three-channels",
}  # fmt: skip


# --- the runner -----------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root``: a hash of each file's bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[relative] = "dir"
        else:
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def folder_times(root: Path) -> dict[str, int]:
    """The modification time of every directory under ``root``, and of ``root``: making a
    run directory and removing it again changes its parent's."""
    folders = [root, *(path for path in root.rglob("*") if path.is_dir())]
    return {str(path): path.lstat().st_mtime_ns for path in folders if not path.is_symlink()}


def hold_lock(directory: Path, holder: dict) -> None:
    """Hold ``directory``'s lock from another process until the test session ends."""
    from trainkit.rundir import LOCK_FILE

    (directory / LOCK_FILE).write_text(json.dumps(holder) + "\n")
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(directory / LOCK_FILE)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder_process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert holder_process.stdout.readline().strip() == b"held"
    _HOLDERS.append(holder_process)


_HOLDERS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _release_held_locks():
    yield
    while _HOLDERS:
        holder = _HOLDERS.pop()
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A small finished run made by the real command (2 epochs, hidden width 16)."""
    cwd = tmp_path_factory.mktemp("finished")
    result = run_trainkit("train", *SMALL, "trainer.max_epochs=2", "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "run"


def run_in_process(args: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["trainkit", *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored after the test, as trainkit sets it
    capsys.readouterr()
    try:
        main(args)
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code if isinstance(exit_info.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def test_the_catalog_is_large():
    assert len(CASES) >= 100, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)
    assert FOUND_IN_RUN <= {c.id for c in CASES}


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] * c.slow) for c in CASES]
)
def test_a_bad_input_ends_in_one_line_and_changes_nothing(
    case, tmp_path, finished_run, monkeypatch, capsys
):
    cwd = tmp_path / "work"
    cwd.mkdir()
    args = case.make(cwd, finished_run)
    before, times_before = snapshot(tmp_path), folder_times(tmp_path)
    if case.process:
        result = run_trainkit(*args, cwd=cwd)
        status, out, err = result.returncode, result.stdout, result.stderr
    else:
        status, out, err = run_in_process(args, cwd, monkeypatch, capsys)
    assert status == case.status, out + err
    assert "Traceback" not in out + err, out + err
    assert "Warning:" not in err, err  # (a process's own: pytest keeps in-process warnings)
    if case.status == 0:
        assert case.expect in err, err
    else:
        (line,) = [line for line in err.splitlines() if line.startswith("trainkit: error: ")]
        assert case.expect in line, line
        assert err.strip().splitlines()[-1] == line  # the error is what is said last
    after = snapshot(tmp_path)
    assert not (cwd / "IMPORTED").exists(), "a module named by a file was imported"
    changed = {path for path, digest in before.items() if after.get(path) != digest}
    assert not changed, f"changed or removed: {sorted(changed)}"
    if not case.leaves_record:
        assert after == before, f"new: {sorted(after.keys() - before.keys())}"
    if not (case.leaves_record or case.id in FOUND_IN_RUN):
        times = folder_times(tmp_path)
        touched = sorted(path for path, time in times_before.items() if times.get(path) != time)
        assert not touched, f"a directory was made and removed in: {touched}"


# --- faults: signals, a full disk, two processes --------------------------------------------

LONG_RUN = [*SMALL, "trainer.max_epochs=100000", "hydra.run.dir=run"]


def start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "trainkit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigterm_at_a_random_point_ends_in_one_line_and_keeps_only_a_trained_run(seed, tmp_path):
    """Before training: one line, and nothing is left. In training: a checkpoint and the
    command that resumes it. Either way the user's files are as they were."""
    write(tmp_path / "mine.txt", "mine")
    before = snapshot(tmp_path)
    process = start(tmp_path, "train", *LONG_RUN)
    time.sleep(random.Random(seed).uniform(0.2, 6.0))
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    if last == "trainkit: interrupted (SIGTERM)":
        assert snapshot(tmp_path) == before
    else:
        assert last == f"resume with: trainkit train resume={tmp_path / 'run'}", stderr
        assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
        assert {p: d for p, d in snapshot(tmp_path).items() if p in before} == before


@pytest.mark.parametrize("seed", [3])
def test_after_a_sigkill_at_a_random_point_the_directory_is_free_and_refusals_are_one_line(
    seed, tmp_path
):
    process = start(tmp_path, "train", *LONG_RUN)
    time.sleep(random.Random(seed).uniform(2.0, 7.0))
    process.kill()
    process.communicate(timeout=60)
    # A lock file left by the killed process is taken over by the next one, and goes with it.
    before = {p: d for p, d in snapshot(tmp_path).items() if not p.endswith(".trainkit.lock")}
    # Nothing holds the lock now (the kernel dropped it): each command answers for itself.
    for args in (
        ["train", "resume=run", "trainer.max_epochs=1"],
        ["train", *SMALL, "hydra.run.dir=run"],
    ):
        result = run_trainkit(*args, cwd=tmp_path)
        if result.returncode == 0:  # killed before anything was written: a new run went in
            continue
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("trainkit: error: ") and "being written by" not in line, line
        assert {p: d for p, d in snapshot(tmp_path).items() if p in before} == before


def test_a_trial_of_an_optuna_search_resumes_as_one_run(
    tmp_path, finished_run, monkeypatch, capsys
):
    """The command a stopped trial prints works: the job's overrides name the search
    (hparams_search=tpe), which belongs to the sweep, not to the one run resumed."""
    folder = unfinished(finished_run, tmp_path / "trial")
    overrides = folder / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + "- hparams_search=tpe\n")
    status, _, err = run_in_process(["train", f"resume={folder}"], tmp_path, monkeypatch, capsys)
    assert status == 0, err
    assert (folder / "summary.json").exists()


def test_a_run_of_a_recipe_file_resumes_from_anywhere(tmp_path, monkeypatch, capsys):
    """Its saved overrides name the recipe by its file (registered under its stem to train),
    so a resume finds it again, from another directory too."""
    write(tmp_path / "recipes" / "mine.yaml", "# @package _global_\ntrainer:\n  max_epochs: 2\n")
    args = ["train", *SMALL, "recipe=recipes/mine.yaml", "hydra.run.dir=run"]
    status, _, err = run_in_process(args, tmp_path, monkeypatch, capsys)
    assert status == 0, err
    assert (
        f"- recipe={tmp_path / 'recipes' / 'mine.yaml'}"
        in (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    )
    folder = unfinished(tmp_path / "run", tmp_path / "elsewhere" / "run")
    status, _, err = run_in_process(["train", "resume=run"], folder.parent, monkeypatch, capsys)
    assert status == 0, err
    assert (folder / "summary.json").exists()


def test_a_sweep_job_locks_its_directory_while_it_trains(tmp_path, monkeypatch):
    """A `resume=` of a job that is still training is refused (it would write the same
    files): each job holds its directory's lock, as a single run does."""
    from trainkit import launch, rundir

    real, held = launch.train_in_processes, []

    def train_checking_the_lock(cfg, run_dir, sweep_job=""):
        held.append(rundir.is_held(run_dir))
        return real(cfg, run_dir, sweep_job)

    monkeypatch.setattr(launch, "train_in_processes", train_checking_the_lock)
    monkeypatch.chdir(tmp_path)
    main(["train", "-m", *SMALL, "trainer.max_epochs=1", "optimizer=sgd,adam",
          "hydra.sweep.dir=sweep"])  # fmt: skip
    assert held == [True, True]
    assert not list((tmp_path / "sweep").glob("*/" + rundir.LOCK_FILE))  # released


def test_two_runs_into_one_directory_at_once_one_trains_the_other_is_refused(tmp_path):
    args = ["train", *SMALL, "trainer.max_epochs=3", "hydra.run.dir=shared"]
    processes = [start(tmp_path, *args) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 2], results
    (refusal,) = [err for code, err in results if code == 2]
    (line,) = refusal.strip().splitlines()
    assert any(f in line for f in ("is being written by", "holds a run", "holds a finished")), line
    epochs = [json.loads(r)["epoch"] for r in (tmp_path / "shared" / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3]


def _can_mount_tmpfs() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path("/tmp") / f"trainkit-tmpfs-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe)], capture_output=True
    )
    if mounted.returncode == 0:
        subprocess.run(["umount", str(probe)], capture_output=True)
    probe.rmdir()
    return mounted.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A directory on a file system of a given size: a real tmpfs where this process may
    mount one (root on Linux), else the test is skipped (the shim test below still runs)."""
    if not _can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    mounted = []

    def make(size: str) -> Path:
        directory = tmp_path / f"disk-{size}"
        directory.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)])
        mounted.append(directory)
        return directory

    yield make
    for directory in mounted:
        # lazily: a log handler of the in-process run may still hold a file there open
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


@pytest.mark.parametrize(
    ("size", "expect"),
    [
        ("4k", "cannot write "),  # at the start: the run directory's config
        ("40k", "cannot write checkpoint "),  # at the first checkpoint
    ],
)
def test_a_full_disk_is_one_line_and_leaves_nothing(
    size, expect, small_disk, tmp_path, monkeypatch, capsys
):
    disk = small_disk(size)
    args = ["train", *SMALL, "trainer.max_epochs=2", f"hydra.run.dir={disk / 'run'}"]
    status, out, err = run_in_process(args, tmp_path, monkeypatch, capsys)
    assert status == 2 and "Traceback" not in out + err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"trainkit: error: {expect}") and "no space left" in line, line
    assert list(disk.iterdir()) == []


@pytest.mark.parametrize("where", ["config", "checkpoint", "metrics"])
def test_a_full_disk_through_a_shim_is_one_line_and_leaves_nothing(
    where, tmp_path, monkeypatch, capsys
):
    """Where no tmpfs can be mounted: the file system refuses through a shim instead."""
    import errno

    from trainkit import checkpoint, reporting

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "config":  # .hydra/, written first
        monkeypatch.setattr(checkpoint, "write_text_atomically", no_space)
    elif where == "checkpoint":
        monkeypatch.setattr(checkpoint, "_write_atomically", no_space)
    else:
        monkeypatch.setattr(reporting.RunLogger, "log_epoch", no_space)
    args = ["train", *SMALL, "trainer.max_epochs=2", "hydra.run.dir=run"]
    status, out, err = run_in_process(args, tmp_path, monkeypatch, capsys)
    assert status == 2 and "Traceback" not in out + err, out + err
    (line,) = err.strip().splitlines()
    assert "no space left on the device; free some space" in line, line
    assert list(tmp_path.iterdir()) == []
