"""Processes and their group: launching workers, joining the group, and the collectives
the runner needs. With one process every function here is a cheap no-op.

A run is distributed when torch's elastic launcher started it: either trainkit itself
(``trainer.devices=N``, through ``launch``) or the user (``torchrun --nproc_per_node N -m
trainkit train ...``). The launcher sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in each worker's environment.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from trainkit.errors import UserError


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Only the main process writes logs, checkpoints and predictions."""
    return rank() == 0


def launched() -> bool:
    """Whether this process is one of several started by an elastic launcher (torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """``trainer.device`` (or what ``key`` names) as this process's device; under DDP on
    GPUs, its local rank's GPU. UserError for a device that is not one, or not here."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{key}={name!r} is not a device; use auto, cpu or cuda") from None
    usable = device.type in ("cpu", "cuda") or (
        device.type == "mps" and torch.backends.mps.is_available()
    )
    if not usable:
        raise UserError(f"{key}={name!r} is not a device trainkit runs on; use auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}={name} but no CUDA GPU is visible; use {key}=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(
            f"{key}={name} but {torch.cuda.device_count()} GPU(s) are visible; use {key}=cuda"
        )
    if device.type == "cuda" and device.index is None and launched():
        device = torch.device("cuda", local_rank())  # one GPU per process
    return device


def check_devices(device: str, processes: int) -> None:
    """UserError unless ``trainer.device`` exists here with ``trainer.devices`` GPUs (or,
    on the CPU, no more than 4 processes a core: each one is a Python with torch)."""
    if resolve_device(device).type == "cuda" and processes > torch.cuda.device_count():
        raise UserError(
            f"trainer.devices={processes} but {torch.cuda.device_count()} GPU(s) are visible; "
            f"use trainer.devices={torch.cuda.device_count()} or fewer"
        )
    cores = os.cpu_count() or 1
    if resolve_device(device).type == "cpu" and processes > 4 * cores:
        raise UserError(
            f"trainer.devices={processes} processes on {cores} CPU core(s); "
            f"use trainer.devices={4 * cores} or fewer"
        )


def setup(device: torch.device) -> None:
    """Join the process group when launched with several processes (NCCL on GPUs, else Gloo)."""
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_process_first():
    """The main process runs the block first (a download, say), then the others do; also
    when it fails there, so that they fail in it as it did (a mistake in the data said as
    it is, not as a peer that went away)."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (unchanged with one process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_to_main(value: Any) -> list[Any] | None:
    """Every process's ``value`` (picklable), in rank order, on the main process; None on
    the others. With one process: ``[value]``."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size() if is_main_process() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def broadcast_from_main(value: Any) -> Any:
    """The main process's ``value`` (picklable), on every process."""
    if not dist.is_initialized():
        return value
    box = [value if is_main_process() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- starting the workers ------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now: each run (each sweep job too) gets its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def standard_start_method() -> None:
    """multiprocessing's default start method back to one of Python's own where a library
    set its own: in a joblib (loky) worker it is "loky", which a process spawned from there
    is told to use and cannot find (a parallel sweep's DDP workers failed so)."""
    if multiprocessing.get_start_method(allow_none=True) not in (
        None,
        *multiprocessing.get_all_start_methods(),
    ):
        multiprocessing.set_start_method(None, force=True)


def launch(processes: int, worker: Callable[..., Any], *args: Any) -> Any:
    """Run ``worker(*args)`` in ``processes`` new processes on this machine through torch's
    elastic launcher (what torchrun uses); returns what rank 0's worker returned.

    The worker runs in a fresh interpreter (spawn), so it and its arguments must be
    importable and picklable. A failing worker stops them all and raises here.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent logs every start and stop, and a failed worker's traceback; the failure
    # is raised here (ChildFailedError holds it) and reported once by the caller.
    # (its modules set their own loggers' levels: each one is quietened, not only the parent)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.multiprocessing")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        # The workers' error files (which the failure raised here has read by then) go to
        # a folder of this process's own, removed after: torch's default is one more
        # /tmp/torchelastic_* left behind by every run.
        logs_specs=DefaultLogsSpecs(log_dir=(logs := tempfile.mkdtemp(prefix="trainkit-ddp-"))),
    )
    standard_start_method()
    # A worker (and multiprocessing's resource tracker) starts as `python -c ...`, which puts
    # the working directory first on sys.path: a multiprocessing.py there would run. Python
    # 3.11 and later leave it out under PYTHONSAFEPATH, which the new processes inherit.
    safe_path = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    # A failing worker's traceback also goes to a pytorch-errorfile-*.pickle that torch
    # names here, in the temporary folder, and never removes: in this launch's folder, it
    # goes with it.
    temporary, tempfile.tempdir = tempfile.tempdir, logs
    try:
        results = elastic_launch(config, worker)(*args)
    finally:
        tempfile.tempdir = temporary
        shutil.rmtree(logs, ignore_errors=True)
        if safe_path is None:
            del os.environ["PYTHONSAFEPATH"]
        else:
            os.environ["PYTHONSAFEPATH"] = safe_path
    return results[0]
