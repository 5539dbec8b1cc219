"""bench/bench_gpu.py: a CPU smoke run with tiny settings, the one-line refusal without
CUDA, and on a GPU a short run of the real thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"
TINY = ["--batches", "2", "--batch-size", "5", "--rounds", "2", "--warmup-epochs", "1"]


def run_bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def check_setting(result: dict, rounds: int) -> None:
    for key in ("trainkit_images_per_s", "plain_images_per_s", "trainkit_vs_plain"):
        assert result[key] > 0, key
    assert result["rounds_done"] == rounds
    assert all(len(runs) == rounds for runs in result["images_per_s"].values())
    assert all(speed > 0 for runs in result["images_per_s"].values() for speed in runs)


@pytest.mark.slow
def test_cpu_smoke_run_reports_both_contenders(tmp_path):
    out = tmp_path / "bench_gpu.json"
    args = ["--device", "cpu", *TINY, "--compile", "off", "--precision", "32"]
    result = run_bench(*args, "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert json.loads(out.read_text()) == summary
    assert summary["complete"] and summary["device"] == "cpu" and summary["gpu"] is None
    assert summary["trainkit_data"] == "loader"  # auto: data.on_device only on a GPU
    assert (summary["train_samples"], summary["steps_per_epoch"]) == (10, 2)
    assert list(summary["settings"]) == ["compile_off"]
    setting = summary["settings"]["compile_off"]
    check_setting(setting, rounds=2)
    # Same data, weights and sample order, in 32-bit on a CPU: the same losses.
    losses = setting["epoch_losses"]
    assert len(losses["trainkit"]) == len(losses["plain"]) == 3  # warm-up + two rounds
    assert setting["max_loss_difference"] < 1e-5, losses
    assert "round 2/2" in result.stderr  # progress, as it goes


def test_without_cuda_it_says_so_in_one_line_and_exits_2():
    result = run_bench(env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no CUDA GPU" in result.stderr and "--device cpu" in result.stderr


@pytest.mark.gpu
def test_on_a_gpu_both_settings_run(tmp_path):
    out = tmp_path / "bench_gpu.json"
    args = ["--batches", "10", "--batch-size", "64", "--rounds", "2", "--out", str(out)]
    result = run_bench(*args, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["gpu"] and summary["cudnn_benchmark"] and summary["precision"] == "bf16"
    assert list(summary["settings"]) == ["compile_off", "compile_on"]
    for setting in summary["settings"].values():
        check_setting(setting, rounds=2)
        # bf16 and cuDNN's algorithms: close, not equal.
        assert setting["first_epoch_loss_difference"] < 0.05, setting["epoch_losses"]


# --- bench/gpu_check.sh: the prepared GPU run ---------------------------------------------

CHECK = BENCH.parent / "gpu_check.sh"


def run_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHECK), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )


def test_gpu_check_without_cuda_says_so_and_writes_nothing(tmp_path):
    result = run_check(str(tmp_path / "out"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gpu_check: no CUDA GPU is visible; use --rehearse to try it on the CPU"
    )
    assert not (tmp_path / "out").exists()


def test_gpu_check_names_its_steps_for_an_unknown_one(tmp_path):
    result = run_check(str(tmp_path / "out"), "--rehearse", "--only", "train_bf16,nope")
    assert result.returncode == 2
    assert result.stderr.startswith("gpu_check: no step nope; steps: environment, train_bf16,")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gpu_check_rehearses_a_step_with_the_one_it_needs_and_reports_it(tmp_path):
    """--only export_torch_export also trains the run it exports; a rehearsal runs on the CPU."""
    out = tmp_path / "out"
    result = run_check(str(out), "--rehearse", "--only", "export_torch_export")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["rehearsal"] and report["failed"] == 0
    assert [s["name"] for s in report["steps"]] == [
        "environment", "train_bf16", "export_torch_export"
    ]  # fmt: skip
    assert report["environment"]["torch"] == __import__("torch").__version__
    assert report["steps"][1]["figures"]["test/acc"] > 0.5
    log = (out / "gpu_check.log").read_text()
    assert "format=torch_export" in log and "=== export_torch_export: passed" in log


def test_gpu_check_fails_a_step_that_passes_but_takes_longer_than_its_max_s(tmp_path, monkeypatch):
    """As a run that hangs at exit after its last line does (DataLoader workers)."""
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("gpu_check", BENCH.parent / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # (its dataclasses look it up)
    spec.loader.exec_module(gpu_check)
    check = gpu_check.Check(tmp_path, tmp_path, True, time.monotonic() + 60)
    with open(tmp_path / "log", "w") as check.log:
        sleep = [sys.executable, "-c", "import time; time.sleep(1.5)"]
        slow = gpu_check.run_step(check, gpu_check.Step("slow", sleep, 30, min_s=0, max_s=1))
        quick = gpu_check.run_step(check, gpu_check.Step("quick", sleep, 30, min_s=0, max_s=20))
    assert (
        slow["ok"] is False
        and slow["note"].startswith("took ")
        and slow["note"].endswith("s, not 1")
    )
    assert quick["ok"] is True
