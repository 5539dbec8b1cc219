"""bench/bench.py end to end with tiny settings: it runs and reports what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench.py"
TINY = ["--repeats", "1", "--epochs", "1", "--check-epochs", "2", "--batches", "2", "--json"]


def run_bench(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(BENCH), *TINY, *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_trainkit_and_the_hand_loop_train_alike():
    summary = run_bench("--startup", "0", "--no-lightning")
    for name in ("trainkit", "plain", "trainkit_logging", "trainkit_on_device"):
        assert summary[f"{name}_steps_per_s"] > 0, name
    assert summary["lightning_steps_per_s"] is None
    assert summary["trainkit_vs_plain"] > 0 and summary["trainkit_on_device_vs_plain"] > 0
    assert summary["steps_per_run"] == 2
    # Same data, weights and sample order: the same losses, on the device or not.
    assert summary["losses_equal_to_5_decimals"], summary["epoch_losses"]
    losses = summary["epoch_losses"]
    assert losses["trainkit_on_device"] == losses["trainkit"]


@pytest.mark.slow  # importing Lightning alone takes seconds
def test_lightning_is_timed_when_installed():
    pytest.importorskip("lightning")
    summary = run_bench("--startup", "0")
    assert summary["lightning_steps_per_s"] > 0
    assert summary["trainkit_vs_lightning"] > 0


@pytest.mark.slow
def test_startup_is_timed():
    summary = run_bench("--startup", "1", "--no-lightning")
    for key in ("help_s", "import_torch_s", "plain_first_step_s", "first_step_s"):
        assert summary[key] > 0, key


def test_predict_bench_compares_like_with_like():
    script = BENCH.with_name("bench_predict.py")
    tiny = ["--images", "40", "--repeats", "1", "--batch-size", "16", "--json"]
    result = subprocess.run(
        [sys.executable, str(script), *tiny], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["same_predictions"]  # the same class for every file, both ways
    assert summary["trainkit_images_per_s"] > 0 and summary["plain_images_per_s"] > 0
    assert summary["trainkit_vs_plain"] > 0


@pytest.mark.slow
def test_pruning_bench_runs_both_searches():
    script = BENCH.with_name("bench_pruning.py")
    tiny = ["--trials", "2", "--epochs", "2", "--json", "data=synthetic", "data.num_samples=120",
            "model=mlp", "model.hidden=[8]"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(script), *tiny], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["unpruned"]["pruned"] == 0 and report["unpruned"]["epochs"] == 4
    assert (
        report["pruned"]["epochs"] <= 4 and report["pruned"]["ok"] + report["pruned"]["pruned"] == 2
    )
