"""trainkit's Optuna sweeper: Hydra's own (hydra-optuna-sweeper), adjusted for trainkit runs.

Hydra loads sweepers only from the ``hydra_plugins`` package, so this small subclass lives
here; conf/hparams_search/*.yaml select it. What it changes:

- the direction follows the monitored metric (trainer.monitor and trainer.monitor_mode);
- rerunning with the same ``hydra.sweep.dir`` continues the study in its SQLite storage:
  job directories are numbered after the trials already there (job N is trial N, nothing is
  overwritten) and only the trials still missing of ``n_trials`` are run;
- a study whose trials all failed ends with a warning, not a traceback, so the sweep
  summary still lists them.

Without the ``sweeps`` extra installed this module defines nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

try:
    from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper
except ImportError:  # pragma: no cover - the optional extra is not installed
    optuna_sweeper = None

log = logging.getLogger(__name__)

if optuna_sweeper is not None:

    class TrainkitOptunaSweeper(optuna_sweeper.OptunaSweeper):
        """Hydra's Optuna sweeper, aimed at the monitored metric and able to continue."""

        def __init__(self, **config) -> None:
            # Hydra's sweeper imports optuna, which imports alembic, which logs at INFO.
            logging.getLogger("alembic").setLevel(logging.WARNING)
            super().__init__(**config)

        def setup(self, *, hydra_context, task_function, config) -> None:
            from trainkit.build import monitored_metric

            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            _, mode = monitored_metric(config)
            self.sweeper.direction = "maximize" if mode == "max" else "minimize"

        def sweep(self, arguments: list[str]) -> None:
            import optuna
            from optuna.trial import TrialState

            optuna.logging.set_verbosity(optuna.logging.WARNING)  # Hydra's sweeper logs the study
            impl = self.sweeper  # Hydra's implementation, which runs the trials
            Path(impl.sweep_dir).mkdir(parents=True, exist_ok=True)  # the storage is there
            study = optuna.create_study(
                study_name=impl.study_name,
                storage=impl.storage,
                direction=impl.direction,
                load_if_exists=True,
            )
            trials = study.get_trials(deepcopy=False)
            finished = sum(trial.state.is_finished() for trial in trials)
            if trials:
                log.info(f"continuing study {study.study_name}: {finished} trials finished")
            # Job N is trial N (an interrupted trial keeps its number and directory), except
            # that a new job never goes into a directory that is there already.
            from trainkit.sweeps import job_number

            taken = [job_number(path) for path in Path(impl.sweep_dir).iterdir()]
            impl.job_idx = max([len(trials), *(n + 1 for n in taken if n is not None)])
            impl.n_trials = max(impl.n_trials - finished, 0)
            expected = finished + impl.n_trials
            try:
                impl.sweep(arguments)
            except ValueError:
                # After the last trial Hydra's sweeper asks for the best one, and there is none
                # when all failed; any other ValueError comes before the trials are done.
                trials = study.get_trials(deepcopy=False)
                if sum(t.state.is_finished() for t in trials) < expected or any(
                    t.state == TrialState.COMPLETE for t in trials
                ):
                    raise
                log.warning("every trial failed: no best trial")
