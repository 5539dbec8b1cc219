"""trainkit's Optuna sweeper: a Hydra sweeper on a current Optuna (4 or later), with pruning.

Hydra loads sweepers only from the ``hydra_plugins`` package, so it lives here;
conf/hydra/sweeper/optuna.yaml configures it and conf/hparams_search/*.yaml select it. It
asks Optuna for trials, launches each as a job through Hydra's launcher (one at a time, or
``n_jobs`` at once with the joblib launcher), and tells Optuna how each ended, reading the
job's ``summary.json``:

- the search space is Hydra's sweep syntax (``choice(...)``, ``range(...)``,
  ``interval(a, b)``, ``tag(log, interval(a, b))``, and ``int(interval(a, b))`` for whole
  numbers); a plain value fixes a key; trainkit.config.check_sweep checks it first;
- the objective is the monitored metric in its direction (trainer.monitor and
  trainer.monitor_mode), or several metrics (``objectives``: a Pareto front);
- pruning: each job reports its monitored metric to its trial after every epoch and stops
  when the pruner says so (``trainkit.sweeps.trial_pruner``); the trial is then recorded as
  pruned, not failed;
- the study lives in SQLite in the sweep directory: rerunning with the same
  ``hydra.sweep.dir`` continues it (job N is trial N; only the missing trials run);
- a job that failed or whose metric is not a finite number is a failed trial, and the
  search goes on.

Without Optuna installed (the ``sweeps`` extra) asking for it is one line (trainkit.sweeps).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Literal

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainkit.errors import UserError, first_line
from trainkit.registry import NonNegativeInt, PositiveInt, check_params
from trainkit.rundir import holds_study

log = logging.getLogger(__name__)


def check_search(launch: DictConfig, arguments: list[str], sweep_dir: str) -> None:
    """The search a command asks for, checked before its sweep directory is made or locked
    (Hydra makes the sweeper only after that): ``hydra.sweeper``'s keys and values, the search
    space, objectives, sampler and pruner, the folder of a SQLite study, and that a study
    it continues searched the same space. ``launch`` is the composed config, Hydra's part
    included; ``arguments`` the command line's overrides of the run's keys. Nothing to check
    for another sweeper."""
    from trainkit.config import check_metric_name, one_line

    node = launch.hydra.sweeper
    if node.get("_target_") != f"{__name__}.{TrainkitOptunaSweeper.__name__}":
        return
    try:
        values = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as error:
        raise UserError(f"hydra.sweeper: {one_line(str(error))}") from None
    del values["_target_"]
    check_params("hydra.sweeper", values, TrainkitOptunaSweeper)
    sweeper = TrainkitOptunaSweeper(**values)
    sweeper.config = launch
    for name in sweeper.objectives:  # (a misspelt one was found after the first trial)
        check_metric_name("hydra.sweeper.objectives", name, launch.task.name)
    space, fixed = sweeper.search(arguments)[:2]
    _check_storage(sweeper.storage, OmegaConf.to_container(node)["storage"])
    # (Optuna writes its tables into a file it opens: only a study of trainkit's is opened.)
    earlier = sweeper.earlier_study(Path(sweep_dir)) if holds_study(Path(sweep_dir)) else None
    if earlier is not None:
        _check_same_study(earlier, space, fixed)


# The launchers' loggers, whose line for each job lists its overrides.
_LAUNCHER_LOGGERS = (
    "hydra._internal.core_plugins.basic_launcher",
    "hydra_plugins.hydra_joblib_launcher._core",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
)
_TRIAL_VARIABLE = re.compile(r" \+\+hydra\.job\.env_set\.TRAINKIT_OPTUNA_\w+=(?:'[^']*'|\S+)")


def _hide_trial_variables(record: logging.LogRecord) -> bool:
    """A launcher's line for a job without the overrides that tell the job its trial
    (``trial_variables``): trainkit's own, not the user's."""
    message = record.getMessage()
    if "TRAINKIT_OPTUNA_" in message:
        record.msg, record.args = _TRIAL_VARIABLE.sub("", message), ()
    return True


def _check_storage(storage: str | None, written: str | None) -> None:
    """A SQLite study's folder exists (unless it is in the sweep directory, which is made
    for it: ``written`` is the value before ``${hydra.sweep.dir}`` was filled in)."""
    prefix = "sqlite:///"
    if not storage or not storage.startswith(prefix) or "${" in str(written):
        return
    folder = Path(storage[len(prefix) :]).parent
    if not folder.is_dir():
        raise UserError(
            f"hydra.sweeper.storage={storage}: there is no folder {folder}; make it, or "
            "leave storage as it is to keep the study in the sweep directory"
        )


class TrainkitOptunaSweeper(Sweeper):
    """Hydra sweeper: an Optuna study over the sweep's search space (see the module)."""

    def __init__(
        self,
        sampler: Literal["tpe", "random", "grid"] = "tpe",
        seed: int | None = None,
        n_startup_trials: NonNegativeInt = 10,
        n_trials: PositiveInt = 20,
        n_jobs: PositiveInt = 1,
        study_name: str = "trainkit",
        storage: str | None = None,
        pruner: Literal["median", "hyperband", "none"] = "median",
        pruner_startup_trials: NonNegativeInt = 5,
        pruner_warmup_epochs: NonNegativeInt = 2,
        objectives: str | list[str] | None = None,
        params: dict | None = None,
    ) -> None:
        self.sampler_name, self.seed, self.n_startup_trials = sampler, seed, n_startup_trials
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.study_name, self.storage = study_name, storage
        self.pruner_name = pruner
        self.pruner_startup_trials, self.pruner_warmup_epochs = (
            pruner_startup_trials,
            pruner_warmup_epochs,
        )
        # One name is one objective (not a list of its letters).
        self.objectives = [objectives] if isinstance(objectives, str) else list(objectives or [])
        self.params = dict(params or {})

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # --- the search ---

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        from trainkit.sweeps import make_pruner

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's storage, at INFO
        for name in _LAUNCHER_LOGGERS:
            logging.getLogger(name).addFilter(_hide_trial_variables)
        # Everything is checked before anything is written (a continued study included).
        space, fixed, names, directions = self.search(arguments)
        sampler, pruner = self.make_sampler(space), make_pruner(self.pruner_spec())
        sweep_dir = Path(self.config.hydra.sweep.dir)
        earlier = self.earlier_study(sweep_dir)
        if earlier is not None:
            _check_same_study(earlier, space, fixed)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        try:
            study = optuna.create_study(
                study_name=self.study_name,
                storage=self.storage,
                sampler=sampler,
                pruner=pruner,
                directions=directions,
                load_if_exists=True,
            )
        except Exception as error:  # the storage cannot be opened or written
            raise UserError(f"hydra.sweeper.storage={self.storage}: {first_line(error)}") from None
        study.set_user_attr("objectives", names)
        study.set_user_attr("fixed", _trained_with(fixed))
        trials = study.get_trials(deepcopy=False)
        for trial in trials:  # a trial whose sweep was stopped: it will not report any more
            if trial.state == TrialState.RUNNING:
                study.tell(trial.number, state=TrialState.FAIL)
                log.warning(f"trial {trial.number} was interrupted: counted as failed")
        trials = study.get_trials(deepcopy=False)
        finished = sum(trial.state.is_finished() for trial in trials)
        total = self.planned_trials(space)
        if trials:
            log.info(f"continuing study {self.study_name}: {finished} trials finished")
        # Job N is trial N (an interrupted trial keeps its number and directory), except that
        # a new job never goes into a directory that is there already.
        from trainkit.sweeps import job_number

        taken = [job_number(path) for path in sweep_dir.iterdir()]
        job_idx = max([len(trials), *(n + 1 for n in taken if n is not None)])
        remaining = max(total - finished, 0)
        while remaining > 0:
            batch = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            overrides = [
                [
                    *fixed,
                    *(f"{key}={_hydra_value(value)}" for key, value in trial.params.items()),
                    *self.trial_variables(trial),
                ]
                for trial in batch
            ]
            results = self.launcher.launch(overrides, initial_job_idx=job_idx)
            for trial, result in zip(batch, results, strict=True):
                self.tell(study, trial, Path(result.hydra_cfg.hydra.runtime.output_dir), names)
            job_idx += len(batch)
            remaining -= len(batch)

    def search(self, arguments: list[str]) -> tuple[dict[str, Any], list[str], list, list]:
        """The search ``arguments`` ask for, checked: its space (Optuna distributions), the
        overrides that fix keys, and the objectives' names and directions. Its sampler and
        pruner are built once, to check them too. UserError for any mistake in them."""
        from trainkit.sweeps import make_pruner

        if not all(isinstance(name, str) and name for name in self.objectives):
            raise UserError(
                f"hydra.sweeper.objectives={self.objectives}: metric names, e.g. "
                "[val/acc,train_time_s]"
            )
        space, fixed = self.search_space(arguments)
        names, directions = self.objective_names()
        self.make_sampler(space)
        make_pruner(self.pruner_spec())
        return space, fixed, names, directions

    def earlier_study(self, sweep_dir: Path):
        """The study a rerun continues (read, not written), or None."""
        import optuna

        if not (sweep_dir / "optuna.db").is_file():
            return None
        try:
            return optuna.load_study(study_name=self.study_name, storage=self.storage)
        except KeyError:  # no study of that name in it
            return None
        except Exception as error:  # a damaged or foreign file
            raise UserError(f"cannot read {sweep_dir / 'optuna.db'}: {error}") from None

    def trial_variables(self, trial) -> list[str]:
        """Overrides that tell the job its trial (trainkit.sweeps.trial_pruner reads them)."""
        from trainkit.overrides import quote_value
        from trainkit.sweeps import TRIAL_VARIABLES

        values = (self.storage or "", self.study_name, str(trial._trial_id), self.pruner_spec())
        return [
            f"++hydra.job.env_set.{name}={quote_value(value)}"
            for name, value in zip(TRIAL_VARIABLES, values, strict=True)
        ]

    def search_space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Optuna distributions of the swept keys (``params``, then the command line's), and
        the overrides that fix a key."""
        context = getattr(self, "hydra_context", None)  # (None when checked before Hydra runs)
        parser = OverridesParser.create(config_loader=context and context.config_loader)
        merged: dict[str, Any] = {}
        for override in parser.parse_overrides(
            [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        ):
            merged[override.get_key_element()] = override  # the command line wins
        space, fixed = {}, []
        for key, override in merged.items():
            if override.is_sweep_override():
                space[key] = _distribution(key, override)
            else:
                fixed.append(f"{key}={override.get_value_element_as_str()}")
        if not space:
            raise UserError(
                "the search has no key to search: give one in Hydra's sweep syntax, e.g. "
                "'optimizer.lr=tag(log, interval(1e-4, 1e-1))'"
            )
        return space, fixed

    def objective_names(self) -> tuple[list[str], list[str]]:
        """The metrics the study optimizes and their directions: ``objectives``, or the
        monitored metric in trainer.monitor_mode's direction."""
        from trainkit.build import monitored_metric
        from trainkit.tasks import lower_is_better

        if not self.objectives:
            monitor, mode = monitored_metric(self.config)
            return [monitor], ["maximize" if mode == "max" else "minimize"]
        return self.objectives, [
            "minimize" if lower_is_better(name) or name.endswith("time_s") else "maximize"
            for name in self.objectives
        ]

    def planned_trials(self, space: dict[str, Any]) -> int:
        """n_trials, or for a grid every point of it."""
        if self.sampler_name != "grid":
            return self.n_trials
        return math.prod(len(values) for values in _grid_of(space).values())

    def make_sampler(self, space: dict[str, Any]):
        import optuna

        if self.sampler_name == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.sampler_name == "grid":
            grid = _grid_of(space)
            return _grid_sampler(grid, self.seed)
        if self.sampler_name == "tpe":
            return optuna.samplers.TPESampler(
                seed=self.seed, n_startup_trials=self.n_startup_trials
            )
        raise UserError(f"hydra.sweeper.sampler={self.sampler_name}: use tpe, random or grid")

    def pruner_spec(self) -> str:
        """The pruner as trainkit.sweeps.make_pruner reads it (in the sweeper and each job)."""
        return f"{self.pruner_name},{self.pruner_startup_trials},{self.pruner_warmup_epochs}"

    def tell(self, study, trial, job_dir: Path, names: list[str]) -> None:
        """Record how the trial's job ended, from its summary.json: complete with its
        objective values, pruned, or failed (no summary, or a value that is not finite)."""
        from optuna.trial import TrialState

        try:
            summary = json.loads((job_dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = None
        if isinstance(summary, dict) and any(name not in summary for name in names):
            missing = next(name for name in names if name not in summary)
            known = ", ".join(k for k, v in summary.items() if isinstance(v, (int, float)))
            raise UserError(
                f"hydra.sweeper.objectives: {missing} is not in a job's summary.json; "
                f"its metrics: {known}"
            )
        values = [summary.get(name) if isinstance(summary, dict) else None for name in names]
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        if isinstance(summary, dict) and summary.get("pruned_at_epoch"):
            study.tell(trial, state=TrialState.PRUNED)
        elif finite and summary is not None:
            study.tell(trial, values)
        else:
            study.tell(trial, state=TrialState.FAIL)


def _grid_of(space: dict[str, Any]) -> dict[str, list]:
    """The values of each key of a grid: its choice(...) or range(...)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    grid = {}
    for key, distribution in space.items():
        if isinstance(distribution, IntDistribution) and not distribution.log:  # range(...)
            grid[key] = list(range(distribution.low, distribution.high + 1, distribution.step))
        elif isinstance(distribution, CategoricalDistribution):
            grid[key] = list(distribution.choices)
        else:
            raise UserError(
                f"hparams_search=grid needs a list of values for {key}: "
                "choice(...) or range(...), not an interval"
            )
    return grid


def _trained_with(fixed: list[str]) -> list[str]:
    """What every trial of a study trains with: the overrides that fix keys, but the choice
    of a sampler (hparams_search=...), which a continued study may change."""
    return sorted(o for o in fixed if o.partition("=")[0].lstrip("+~") != "hparams_search")


def _check_same_study(study, space: dict[str, Any], fixed: list[str]) -> None:
    """A continued study must search the space it searched (Optuna cannot mix two), and its
    new trials train as its earlier ones did (or they would be ranked against trials of
    another config: fewer epochs, say)."""
    earlier, fixed = study.user_attrs.get("fixed"), _trained_with(fixed)
    if isinstance(earlier, list) and sorted(earlier) != fixed:
        before = " ".join(sorted(set(earlier) - set(fixed))) or "nothing more"
        now = " ".join(sorted(set(fixed) - set(earlier))) or "nothing more"
        raise UserError(
            f"the study in this sweep directory trained its trials with {before}, and this "
            f"command gives {now}; give its overrides to continue it, or use a new "
            "hydra.sweep.dir"
        )
    for trial in study.get_trials(deepcopy=False):
        for key, distribution in trial.distributions.items():
            if key in space and space[key] != distribution:
                raise UserError(
                    f"{key}: the study in this sweep directory searched {_shown(distribution)}, "
                    f"and this command asks {_shown(space[key])}; keep the search space to "
                    "continue it, or use a new hydra.sweep.dir"
                )


def _shown(distribution) -> str:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return f"choice({', '.join(map(str, choices))})"
    log_scale = " (log)" if getattr(distribution, "log", False) else ""
    return f"[{distribution.low}, {distribution.high}]{log_scale}"


def _grid_sampler(grid: dict[str, list], seed: int | None):
    """Optuna's grid sampler, without its ``study.stop()`` once the grid is done: that works
    only inside ``study.optimize``, and the sweeper counts the points itself. (Made here:
    this module is imported for every run, Optuna only for a search.)"""
    import optuna

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid(grid, seed=seed)


def _distribution(key: str, override) -> Any:
    """Hydra's sweep of ``key`` as an Optuna distribution; UserError for one Optuna refuses
    (an interval whose low is above its high, a log scale from 0)."""
    try:
        return _optuna_distribution(key, override)
    except ValueError as error:
        raise UserError(f"{override.input_line}: {error}") from None


def _optuna_distribution(key: str, override) -> Any:
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(
            list(override.sweep_iterator(transformer=Transformer.encode))
        )
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if all(isinstance(v, int) for v in values) and len(values) > 1:
            step = values[1] - values[0]
            return IntDistribution(values[0], values[-1], step=step)
        return CategoricalDistribution(values)  # (Hydra's range stops before its end)
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise UserError(f"{key}: a sweep Optuna cannot search ({override.input_line})")


def _hydra_value(value: Any) -> str:
    """A sampled value as an override's value (Hydra's grammar: quoted where it must be)."""
    from trainkit.overrides import quote_value

    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value):
        return quote_value(value)  # (a plain name, like an option, stays unquoted)
    return str(value)
