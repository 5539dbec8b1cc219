"""Launching a training run: in this process, in ``trainer.devices`` worker processes
(DDP, started here through torch's elastic launcher), or as one of the processes torchrun
started. Whatever the number of processes, one config and one run directory.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainkit import distributed, sweeps
from trainkit.errors import UserError, gpu_memory, is_out_of_memory, out_of_memory
from trainkit.registry import load_components
from trainkit.runner import Interrupted, Runner


def train_in_processes(cfg: DictConfig, run_dir: Path, sweep_job: str = "") -> dict[str, Any]:
    """One process, ``trainer.devices`` processes started here, or those torchrun started;
    returns the run's summary (rank 0's). ``sweep_job``: the prefix of a sweep job's lines."""
    if distributed.launched():  # torchrun's main process: hand the run to the others
        container = OmegaConf.to_container(cfg, resolve=True)
        distributed.broadcast_from_main((container, str(run_dir)))
        return train(OmegaConf.create(container), run_dir)
    if cfg.trainer.devices > 1:
        return train_distributed(cfg, run_dir, cfg.trainer.devices, sweep_job)
    return train(cfg, run_dir)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Build a Runner from ``cfg`` and fit it; returns the run's summary."""
    try:
        runner = Runner(cfg, run_dir)
        runner.prune = sweeps.trial_pruner()  # a trial of an Optuna search: its pruner
        if not gc.isenabled():  # the CLI's startup (see cli.train): what it built stays
            gc.freeze()  # frozen: collections skip it, and forked DataLoader workers share it
            gc.enable()
        try:
            return runner.fit()
        finally:
            runner.close()
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        raise out_of_memory(error, _memory_fix(cfg, error)) from None
    finally:
        distributed.teardown()


def _memory_fix(cfg: DictConfig, error: BaseException) -> str:
    """What to change when a run does not fit in memory."""
    batch = cfg.data.batch_size
    fix = f"lower data.batch_size={batch} (trainer.accumulate=K keeps the batch an update sees)"
    if gpu_memory(error) and str(cfg.trainer.precision) == "32":
        fix += ", or use trainer.precision=bf16"
    return fix


def train_distributed(
    cfg: DictConfig, run_dir: Path, processes: int, sweep_job: str = ""
) -> dict[str, Any]:
    """Train in ``processes`` worker processes (DDP) started here; returns rank 0's summary.

    The config is composed once, here, and handed to every worker: one run, one directory.
    """
    distributed.check_devices(cfg.trainer.device, processes)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        return distributed.launch(processes, distributed_worker, container, str(run_dir), sweep_job)
    except SignalException as error:
        # SIGINT/SIGTERM here: the launcher passed it on to the workers, which stopped at a
        # step's end and saved, as one process does; said so once, here.
        last = run_dir / "checkpoints" / "last.pt"
        raise Interrupted(error.sigval, last if last.exists() else None) from None
    except ChildFailedError as error:
        # A user's mistake found in a worker still ends in its one line, whichever worker
        # failed first (the others may fail first as the peer they lost).
        _, first = error.get_first_failure()
        for failure in [first, *error.failures.values()]:
            message = failure.message  # the worker's error file: {"message": "UserError: ..."}
            if isinstance(message, dict):
                message = message.get("message", "")
            if isinstance(message, str) and "UserError: " in message:
                raise UserError(message.split("UserError: ", 1)[1].strip()) from None
        raise


def config_from_main_process(container: dict[str, Any]) -> DictConfig:
    """The config the main process handed over as plain data (to a DDP worker, a torchrun
    follower), with the plugins its command line named imported here too."""
    cfg = OmegaConf.create(container)
    load_components(cfg.get("plugins") or [])
    return cfg


def distributed_worker(
    container: dict[str, Any], run_dir: str, sweep_job: str = ""
) -> dict[str, Any]:
    """One worker of ``train_distributed`` (in its own process): train with the given config."""

    from torch.distributed.elastic.multiprocessing.errors import record

    from trainkit.reporting import setup_worker_logging

    setup_worker_logging(Path(run_dir), distributed.is_main_process(), sweep_job)
    # The processes share the machine's cores instead of each starting a thread per core.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // distributed.world_size()))
    return record(train)(config_from_main_process(container), Path(run_dir))


def follow_main_process() -> None:
    """A non-main process started by torchrun: receive the config and run directory that the
    main process's Hydra made, and train with it (one run directory for all processes)."""
    from trainkit.reporting import setup_worker_logging

    container, run_dir = distributed.broadcast_from_main(None)
    setup_worker_logging(Path(run_dir), main=False)
    train(config_from_main_process(container), Path(run_dir))
