"""What pruning saves: the same Optuna search run twice, with the median pruner and without.

Both are ``trainkit train -m hparams_search=tpe`` with the same sampler seed and search
space, on the default data unless told otherwise; reported for each: the epochs trained in
all, the training time, the trials pruned, and the best monitored value found (the sweep's
sweep_summary.json). Not a timed test: tests/test_bench.py runs it with tiny settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def search(pruner: str, sweep_dir: Path, trials: int, epochs: int, extra: list[str]) -> dict:
    """One search; its sweep_summary.json's totals and best value."""
    command = [
        sys.executable, "-m", "trainkit", "train", "-m", "hparams_search=tpe",
        f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.seed=0",
        "hydra.sweeper.n_startup_trials=3", "hydra.sweeper.pruner_startup_trials=3",
        f"hydra.sweeper.pruner={pruner}", f"trainer.max_epochs={epochs}",
        "logger.progress_bar=false", f"hydra.sweep.dir={sweep_dir}", *extra,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: some trials failed (diverged), the search went on
        raise SystemExit(f"the search failed:\n{done.stderr}")
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    monitor, mode = summary["monitor"], summary["mode"]
    values = [
        job[monitor]
        for job in summary["jobs"]
        if job["status"] == "ok" and job[monitor] is not None
    ]
    best = (max if mode == "max" else min)(values) if values else None
    return {**summary["totals"], "best": best, "monitor": monitor, "mode": mode}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("overrides", nargs="*", help="more overrides for both searches")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        results = {
            pruner: search(pruner, Path(folder) / pruner, args.trials, args.epochs, args.overrides)
            for pruner in ("median", "none")
        }
    pruned, full = results["median"], results["none"]
    better = (
        pruned["best"] is not None
        and full["best"] is not None
        and (
            pruned["best"] >= full["best"]
            if pruned["mode"] == "max"
            else pruned["best"] <= full["best"]
        )
    )
    report = {
        "pruned": pruned,
        "unpruned": full,
        "epochs_ratio": pruned["epochs"] / max(full["epochs"], 1),
        "best_at_least_as_good": better,
    }
    if args.json:
        print(json.dumps(report))
        return
    for name, result in (("median pruner", pruned), ("no pruner", full)):
        print(
            f"{name:>13}: {result['epochs']} epochs, {result['train_time_s']:.1f}s of training, "
            f"{result['pruned']} of {args.trials} trials pruned, best {result['monitor']} "
            f"{result['best']}"
        )
    print(
        f"pruning trained {report['epochs_ratio']:.2f}x the epochs; best value at least as "
        f"good: {better}"
    )


if __name__ == "__main__":
    main()
