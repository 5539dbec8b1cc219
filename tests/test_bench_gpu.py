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
