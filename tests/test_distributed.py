"""DDP on CPU with Gloo: real worker processes, one run directory, the numbers of one
process on the same global batch, and each evaluation sample counted once."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch

from tests.conftest import run_dirs, run_trainkit
from trainkit.data import build_loaders, synthetic
from trainkit.data.loaders import LoaderSettings, ShardSampler

# 600 samples: 420 train (even, so DistributedSampler adds no repeats), 90 val, 90 test.
RUN = [
    "data=synthetic",
    "model=mlp",
    "model.hidden=[32]",
    "trainer.max_epochs=3",
    "logger.progress_bar=false",
]
# The same global batch: 2 processes x 64, or 1 process x 128. Values agree to float rounding
# (the gradient is averaged across processes instead of within one batch).
TOLERANCE = 1e-4
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_shards_cover_an_evaluation_split_exactly_once():
    for length in (0, 1, 7, 90):
        shards = [list(ShardSampler(length, 4, rank)) for rank in range(4)]
        assert sorted(i for shard in shards for i in shard) == list(range(length))


def test_a_global_batch_holds_the_same_samples_for_one_or_two_processes():
    splits = synthetic(num_samples=600)
    one = build_loaders(splits, LoaderSettings(batch_size=64), seed=3)["train"]
    two = [
        build_loaders(splits, LoaderSettings(batch_size=32), seed=3, world_size=2, rank=r)["train"]
        for r in range(2)
    ]
    for epoch in (0, 1):
        for loader in (one, *two):
            loader.sampler.set_epoch(epoch)
        for single, *shards in zip(one, *two, strict=True):
            together = torch.cat([shard[2] for shard in shards])
            assert sorted(single[2].tolist()) == sorted(together.tolist())


# The first layer frozen for epoch 1: DDP is built again around the model when it unfreezes,
# or its gradients would never be averaged across the processes.
UNFREEZING = ["finetune.freeze=[1.*]", "finetune.unfreeze_at_epoch=2"]
# A module of the working directory's that stands in for one of Python's, and says so in a
# process started as `python -c` (the test's `python -m trainkit` puts the directory on
# sys.path itself, as Python does for -m).
STAND_IN = """
import importlib, os, sys
if sys.argv[0] == "-c":
    open(f"imported-{os.getpid()}", "w").close()
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]
del sys.modules[__name__]
sys.modules[__name__] = importlib.import_module(__name__)
"""
# A schedule that never acts within the run, for its warning.
FLAT = ["scheduler=step", "scheduler.step_size=1000"]


@pytest.mark.distributed
# [plain] is the real 2-process Gloo run of the default test run; the rest of this file is slow.
@pytest.mark.parametrize(
    "extra", [[], pytest.param(UNFREEZING, marks=pytest.mark.slow)], ids=["plain", "unfreezing"]
)
def test_two_gloo_processes_make_one_run_with_the_numbers_of_one_process(tmp_path, extra):
    two, temporary = tmp_path / "two", tmp_path / "tmp"
    two.mkdir()
    temporary.mkdir()
    two.joinpath("multiprocessing.py").write_text(STAND_IN)  # files here are data, not code
    env = {**ONE_THREAD, "TMPDIR": str(temporary)}
    extra = [*extra, *FLAT]
    result = run_trainkit("train", *RUN, *extra, "trainer.devices=2", cwd=two, env=env)
    assert result.returncode == 0, result.stderr
    assert "on cpu in 2 processes (DDP)" in result.stdout + result.stderr
    # Each process finds the config's warning; the main one says it.
    assert (result.stdout + result.stderr).count("keeps the lr at") == 1
    assert not list(two.glob("imported-*"))  # (the workers start as `python -c`)
    assert not list(temporary.iterdir())  # (torch's launcher left a torchelastic_* folder)
    (run_dir,) = run_dirs(two)  # one directory, whatever the number of processes
    one = tmp_path / "one"
    one.mkdir()
    result = run_trainkit("train", *RUN, *extra, "data.batch_size=128", cwd=one, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    # The reference has the global batch of two processes of 64 (the data's default).
    (single_dir,) = run_dirs(one)

    distributed, single = summary_of(run_dir), summary_of(single_dir)
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "test/f1", "train/loss"):
        assert distributed[key] == pytest.approx(single[key], abs=TOLERANCE), key
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]  # rank 0 logged, once per epoch
    with open(run_dir / "predictions.csv") as handle:
        indices = [int(row["index"]) for row in csv.DictReader(handle)]
    with open(single_dir / "predictions.csv") as handle:
        single_indices = [int(row["index"]) for row in csv.DictReader(handle)]
    assert indices == single_indices and len(set(indices)) == 90  # each test sample once
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


@pytest.mark.distributed
@pytest.mark.slow
def test_a_mistake_found_in_the_workers_is_one_line(tmp_path):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    result = run_trainkit(
        "train",
        *RUN,
        "trainer.devices=2",
        "optimizer.lr_multipliers={nothing.*:2.0}",
        cwd=tmp_path,
        env={**ONE_THREAD, "TMPDIR": str(temporary)},
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "trainkit: error: optimizer.lr_multipliers: pattern 'nothing.*' matches no parameter"
    )
    assert run_dirs(tmp_path) == []
    # (torch left each failed worker's pytorch-errorfile-*.pickle; its inductor cache stays)
    assert [path.name for path in temporary.iterdir()] in ([], ["torchinductor_root"])


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_started_processes_make_one_run(tmp_path):
    import os
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "trainkit", "train", *RUN]
    env = {**os.environ, **ONE_THREAD, "COLUMNS": "200"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert summary_of(run_dir)["test/acc"] > 0.5


@pytest.mark.distributed
def test_a_mistake_under_torchrun_is_said_once(tmp_path):
    """Each process torchrun starts checks the same command line; only rank 0 says so."""
    import os
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "trainkit", "train", "optimizer=adamm"]
    env = {**os.environ, **ONE_THREAD, "COLUMNS": "200"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainkit: error:")]
    assert errors == [
        "trainkit: error: unknown optimizer 'adamm'; did you mean 'adam'? available: adadelta, "
        "adagrad, adam, adamax, adamw, nadam, radam, rmsprop, sgd"
    ]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.distributed
@pytest.mark.slow
def test_a_sweep_of_ddp_jobs_gives_each_job_its_run(tmp_path):
    result = run_trainkit(
        "train", "-m", *RUN, "trainer.devices=2", "optimizer=sgd,adam", cwd=tmp_path, env=ONE_THREAD
    )
    assert result.returncode == 0, result.stderr
    assert len(run_dirs(tmp_path)) == 2


@pytest.mark.distributed
@pytest.mark.gpu
def test_ddp_on_one_gpu_through_the_launcher(tmp_path):
    import os
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1"]
    command += ["-m", "trainkit", "train", *RUN, "trainer.device=cuda", "trainer.precision=bf16"]
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert summary_of(run_dir)["test/acc"] > 0.5


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_checkpoint_and_resume_to_the_same_weights(tmp_path):
    from trainkit import checkpoint

    args = [*RUN, "trainer.devices=2", "trainer.checkpoint_every=5", "trainer.keep_last=4"]
    result = run_trainkit("train", *args, cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    finished = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    middle = run_dir / "checkpoints" / "step_0000005.pt"  # within epoch 2 (4 steps an epoch)
    assert checkpoint.load(middle)["epoch_progress"] is not None

    result = run_trainkit("train", f"resume={middle}", cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert run_dirs(tmp_path) == [run_dir]
    resumed = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == finished["step"]
    for key, value in finished["model"].items():
        assert torch.allclose(resumed["model"][key], value, atol=1e-6), key


@pytest.mark.distributed
@pytest.mark.gpu
def test_sync_batchnorm_makes_two_processes_match_one_with_batch_norm(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs: torch's SyncBatchNorm runs on GPUs only")
    conv = ["data=synthetic", "model=resnet_cifar", "model.width=8", "trainer.max_epochs=2"]
    conv += ["trainer.device=cuda", "trainer.deterministic=false"]
    conv += ["logger.progress_bar=false"]
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    result = run_trainkit(
        "train", *conv, "trainer.devices=2", "trainer.sync_batchnorm=true", cwd=two, env=ONE_THREAD
    )
    assert result.returncode == 0, result.stderr
    result = run_trainkit("train", *conv, "data.batch_size=128", cwd=one, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    (two_dir,), (one_dir,) = run_dirs(two), run_dirs(one)
    for key in ("val/loss", "test/loss"):
        assert summary_of(two_dir)[key] == pytest.approx(summary_of(one_dir)[key], abs=1e-3), key


@pytest.mark.distributed
@pytest.mark.slow
def test_sigterm_to_a_ddp_run_saves_says_how_to_resume_in_one_place_and_exits_143(tmp_path):
    """The launcher passes the signal on; the workers stop at a step's end and save; the
    main process says so once (no launcher traceback) and exits 128 + 15."""
    import os
    import signal
    import subprocess
    import time

    command = [sys.executable, "-m", "trainkit", "train", *RUN, "trainer.max_epochs=100000"]
    command += ["trainer.devices=2", "hydra.run.dir=run"]
    env = {**os.environ, **ONE_THREAD, "COLUMNS": "200"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SignalException" not in err, err
    lines = err.strip().splitlines()
    assert lines[-2] == f"trainkit: SIGTERM at a step's end; checkpoint saved: {last}"
    assert lines[-1] == f"resume with: trainkit train resume={tmp_path / 'run'}"


def test_a_librarys_own_start_method_gives_way_to_pythons_for_the_workers():
    """In a joblib (loky) worker, multiprocessing's start method is "loky", which processes
    spawned from there are told to use and cannot find: a parallel sweep's DDP jobs failed."""
    import multiprocessing

    from joblib.externals.loky.backend import context  # noqa: F401 (registers "loky")

    from trainkit.distributed import standard_start_method

    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("loky", force=True)
    try:
        standard_start_method()
        assert multiprocessing.get_start_method() in multiprocessing.get_all_start_methods()
        multiprocessing.set_start_method("spawn", force=True)
        standard_start_method()  # Python's own: left as it is
        assert multiprocessing.get_start_method() == "spawn"
    finally:
        multiprocessing.set_start_method(before, force=True)
