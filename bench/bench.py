"""trainkit's training loop against a hand-written PyTorch loop and Lightning.

    python bench/bench.py [--repeats N] [--epochs E] [--check-epochs C] [--batches B]
                          [--threads T] [--startup S] [--no-lightning] [--json]

One workload, trained three ways in one process: scikit-learn's digits upsampled to 32x32
(``data=digits32``, a plugin in bench_components.py), the CIFAR ResNet-8 (``resnet_cifar``,
depth 8), batch 64, SGD (lr 0.1, momentum 0.9, weight decay 5e-4 on every parameter), a
constant lr, seed 0, the same number of torch threads. The three get the same tensors (built
by trainkit's own ``build_data``), the same initial weights (the same builder after the same
seed) and the same sample order (trainkit's per-epoch seeded permutation).

- trainkit: ``Runner.train_epoch()`` with TensorBoard and the progress bar off, and again
  with both on (trainkit's defaults), to price them; and with ``data.on_device=true`` (the
  data set held on the run's device, here the CPU, and batches cut there: no DataLoader).
- plain: the loop one writes by hand: index the tensors with the permutation, forward,
  cross-entropy, backward, step; the epoch's loss summed on the device.
- lightning: a LightningModule with that training step, fed trainkit's train loader; no
  logger, checkpointing, progress bar or validation (pip install -e '.[bench]').

First each contender trains ``--check-epochs`` epochs untimed (a warm-up, and the loss
check: the per-epoch train losses of trainkit, with and without ``data.on_device``, must
equal the hand loop's). Then only training epochs are timed (no validation, checkpoints or
setup): the contenders take turns, in a rotating order, ``--repeats`` times, each from fresh
weights; each one's median steps/s is reported (and steps per CPU-second of this process,
less sensitive to other programs on the machine), and the ratios are the medians of the
ratios within each round, which hold when the machine's speed drifts.

Startup (``--startup N`` rounds, in turn): the wall time of ``trainkit --help``; from
process start to the first optimizer step of ``trainkit train`` (its default config, the
first_step_probe plugin ending the process there), of the same done by hand
(first_step_plain.py), and to the end of ``import torch``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from trainkit import config
from trainkit.build import build_data
from trainkit.data import Splits, build_loaders, split_data_node
from trainkit.registry import MODELS
from trainkit.runner import Runner

BENCH_DIR = Path(__file__).resolve().parent
WORKLOAD = [
    "plugins=[bench_components]",  # data=digits32 (and the startup probe)
    "data=digits32",
    "+data.batch_size=64",
    "model=resnet_cifar",
    "model.depth=8",
    "optimizer=sgd",
    "optimizer.lr=0.1",
    "optimizer.momentum=0.9",
    "optimizer.weight_decay=5e-4",
    "optimizer.decay_norm_and_bias=true",  # one parameter group, as in the hand loop
    "scheduler=constant",
    "augmentation=none",
    "trainer.seed=0",
    "trainer.device=cpu",
]
QUIET = ["logger.tensorboard=false", "logger.progress_bar=false"]
LOGGING = ["logger.tensorboard=true", "logger.progress_bar=true"]


@dataclass
class Result:
    steps: int
    seconds: float  # wall time in training epochs only
    cpu_seconds: float  # this process's CPU time (all its threads) in those epochs
    page_faults: int  # minor page faults in those epochs (memory the allocator got anew)
    epoch_losses: list[float]  # mean train loss of each epoch

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def steps_per_cpu_s(self) -> float:
        return self.steps / self.cpu_seconds


class Clock:
    """Wall seconds, CPU seconds and minor page faults summed over the timed stretches."""

    def __init__(self):
        self.seconds = self.cpu_seconds = 0.0
        self.page_faults = 0

    def start(self) -> None:
        self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.seconds += time.perf_counter() - self._wall
        self.cpu_seconds += time.process_time() - self._cpu
        self.page_faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults

    def result(self, steps: int, epoch_losses: list[float]) -> Result:
        return Result(steps, self.seconds, self.cpu_seconds, self.page_faults, epoch_losses)


def compose(overrides: list[str]):
    cfg = config.compose(config.prepare(overrides))
    config.validate(cfg)
    return cfg


# --- trainkit ----------------------------------------------------------------------------


def run_trainkit(cfg, epochs: int) -> Result:
    """``Runner.train_epoch()`` ``epochs`` times, advancing the epoch as ``fit`` does."""
    with tempfile.TemporaryDirectory() as run_dir:
        runner = Runner(cfg, Path(run_dir))
        clock, losses = Clock(), []
        for _ in range(epochs):
            clock.start()
            record = runner.train_epoch()
            clock.stop()
            runner.epoch += 1
            losses.append(record["train/loss"])
        runner.logger.close()
        return clock.result(runner.step, losses)


# --- the hand-written loop -----------------------------------------------------------------


def run_plain(cfg, splits: Splits, epochs: int, batches: int) -> Result:
    """The loop as one writes it by hand, on the same tensors, weights and sample order."""
    seed, batch_size, opt = cfg.trainer.seed, cfg.data.batch_size, cfg.optimizer
    torch.manual_seed(seed)
    model = MODELS.build(
        cfg.model, "model", num_classes=splits.num_classes, input_shape=splits.input_shape
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
    )
    inputs_all, targets_all = splits.train.inputs, splits.train.targets
    count = len(targets_all)
    starts = list(range(0, count, batch_size))[: batches or None]
    steps, clock, losses = 0, Clock(), []
    for epoch in range(epochs):
        clock.start()
        # trainkit's shuffle (DistributedSampler's): a permutation seeded with seed + epoch.
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch))
        model.train()
        loss_sum, seen = torch.zeros(()), 0
        for start in starts:
            rows = order[start : start + batch_size]
            inputs, targets = inputs_all[rows], targets_all[rows]
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(rows)
            seen += len(rows)
            steps += 1
        losses.append(loss_sum.item() / seen)
        clock.stop()
    return clock.result(steps, losses)


# --- Lightning ---------------------------------------------------------------------------


def run_lightning(cfg, splits: Splits, epochs: int, batches: int) -> Result:
    """A minimal LightningModule and Trainer: no logger, checkpoints, bar or validation."""
    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available: ..."
    seed, opt = cfg.trainer.seed, cfg.optimizer

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = MODELS.build(
                cfg.model, "model", num_classes=splits.num_classes, input_shape=splits.input_shape
            )

        def on_train_epoch_start(self):
            self.loss_sum, self.seen = torch.zeros(()), 0

        def training_step(self, batch, batch_index):
            inputs, targets, _ = batch
            loss = F.cross_entropy(self.model(inputs), targets)
            self.loss_sum += loss.detach() * len(targets)
            self.seen += len(targets)
            return loss

        def on_train_epoch_end(self):
            losses.append(self.loss_sum.item() / self.seen)

        def configure_optimizers(self):
            return torch.optim.SGD(
                self.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
            )

    class Timer(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            clock.start()

        def on_train_epoch_end(self, trainer, module):
            clock.stop()

    clock, losses = Clock(), []
    torch.manual_seed(seed)
    module = Module()
    _, loader_settings = split_data_node(cfg.data)
    loader = build_loaders(splits, loader_settings, seed)["train"]  # trainkit's train loader
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_train_batches=batches or 1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timer()],
    )
    trainer.fit(module, train_dataloaders=loader)
    return clock.result(trainer.global_step, losses)


def lightning_version() -> str | None:
    try:
        import lightning
    except ImportError:
        return None
    return lightning.__version__


# --- the timed rounds ----------------------------------------------------------------------


def time_training(
    args: argparse.Namespace, say: Callable[[str], None]
) -> tuple[dict[str, Result], dict[str, list[Result]], int]:
    """First each contender's untimed loss check (``--check-epochs``), which also warms up
    the process; then every contender once per round, in a rotating order. Returns the
    checks and the timed results by contender, and the number of train samples."""
    limit = [f"trainer.limit_train_batches={args.batches}"]
    quiet_cfg = compose([*WORKLOAD, *QUIET, *limit])
    logging_cfg = compose([*WORKLOAD, *LOGGING, *limit])
    on_device_cfg = compose([*WORKLOAD, *QUIET, *limit, "+data.on_device=true"])
    splits, _ = build_data(quiet_cfg, quiet_cfg.trainer.seed)  # what the Runner trains on
    contenders: dict[str, Callable[[int], Result]] = {
        "trainkit": lambda epochs: run_trainkit(quiet_cfg, epochs),
        "trainkit_logging": lambda epochs: run_trainkit(logging_cfg, epochs),
        "trainkit_on_device": lambda epochs: run_trainkit(on_device_cfg, epochs),
        "plain": lambda epochs: run_plain(quiet_cfg, splits, epochs, args.batches),
    }
    if not args.no_lightning and lightning_version():
        contenders["lightning"] = lambda epochs: run_lightning(
            quiet_cfg, splits, epochs, args.batches
        )
    # The first steps of a process are slow (allocator, oneDNN kernels, imports): untimed.
    checks = {}
    for name, run in contenders.items():
        say(f"loss check (untimed): {name}, {args.check_epochs} epoch(s)")
        checks[name] = run(args.check_epochs)
    results: dict[str, list[Result]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(args.repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            result = contenders[name](args.epochs)
            if torch.get_num_threads() != args.threads:
                raise RuntimeError(f"{name} changed the number of torch threads")
            results[name].append(result)
            say(f"round {round_index + 1}/{args.repeats}: {name} {result.steps_per_s:.2f} steps/s")
    return checks, results, len(splits.train)


def max_difference(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


# --- startup -------------------------------------------------------------------------------


def trainkit_command() -> list[str]:
    script = Path(sys.executable).parent / "trainkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trainkit"]


def seconds_to_marker(command: list[str], cwd: Path, env: dict[str, str], marker: Path) -> float:
    """From just before the process starts to the time.time() it wrote into ``marker``."""
    marker.unlink(missing_ok=True)
    started = time.time()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not marker.exists():
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return float(marker.read_text()) - started


def time_startup(rounds: int, say: Callable[[str], None]) -> dict[str, float]:
    """Medians over ``rounds`` rounds, each running in turn: ``import torch``, the hand-written
    script to its first step, ``trainkit --help``, and ``trainkit train`` to its first step."""
    trainkit = trainkit_command()
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        marker = cwd / "marker"
        path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path, "TRAINKIT_BENCH_FIRST_STEP": str(marker)}
        import_torch = [
            sys.executable,
            "-c",
            "import torch, time, os; "
            "open(os.environ['TRAINKIT_BENCH_FIRST_STEP'], 'w').write(repr(time.time()))",
        ]
        plain = [sys.executable, str(BENCH_DIR / "first_step_plain.py")]
        first_step = [
            *trainkit,
            "train",
            "plugins=[bench_components]",
            "regularization=[first_step_probe]",
        ]
        times: dict[str, list[float]] = {name: [] for name in ("torch", "plain", "help", "step")}
        for round_index in range(rounds + 1):  # round 0 warms the file cache
            measured = {"torch": seconds_to_marker(import_torch, cwd, env, marker)}
            measured["plain"] = seconds_to_marker(plain, cwd, env, marker)
            started = time.perf_counter()
            subprocess.run([*trainkit, "--help"], cwd=cwd, env=env, capture_output=True, check=True)
            measured["help"] = time.perf_counter() - started
            measured["step"] = seconds_to_marker(first_step, cwd, env, marker)
            if round_index:
                for name, value in measured.items():
                    times[name].append(value)
                say(
                    f"startup {round_index}/{rounds}: import torch {measured['torch']:.2f}s, "
                    f"plain first step {measured['plain']:.2f}s, --help {measured['help']:.2f}s, "
                    f"trainkit first step {measured['step']:.2f}s"
                )

    def median_difference(a: str, b: str) -> float:
        return statistics.median(x - y for x, y in zip(times[a], times[b], strict=True))

    return {
        "help_s": statistics.median(times["help"]),
        "import_torch_s": statistics.median(times["torch"]),
        "plain_first_step_s": statistics.median(times["plain"]),
        "first_step_s": statistics.median(times["step"]),
        "first_step_after_import_torch_s": median_difference("step", "torch"),
        "first_step_after_plain_s": median_difference("step", "plain"),
    }


# --- report --------------------------------------------------------------------------------

LABELS = {
    "trainkit": "trainkit",
    "trainkit_logging": "trainkit + TensorBoard + progress bar",
    "trainkit_on_device": "trainkit, data.on_device=true",
    "plain": "hand-written PyTorch loop",
    "lightning": "Lightning",
}


def median_ratio(numerators: list[Result], denominators: list[Result], cpu: bool = False) -> float:
    """The median over rounds of the ratio of steps/s (or steps per CPU-second) within one
    round: it holds when the machine's speed drifts between rounds."""

    def speed(result: Result) -> float:
        return result.steps_per_cpu_s if cpu else result.steps_per_s

    pairs = zip(numerators, denominators, strict=True)
    return statistics.median(speed(a) / speed(b) for a, b in pairs)


def summarize(
    args, checks: dict[str, Result], results: dict[str, list[Result]], train_samples: int
) -> dict:
    """The JSON object: each contender's median steps/s, the ratios, the loss check."""
    summary: dict = {}
    for name in LABELS:
        runs = results.get(name)
        summary[f"{name}_steps_per_s"] = (
            statistics.median(r.steps_per_s for r in runs) if runs else None
        )
        summary[f"{name}_steps_per_cpu_s"] = (
            statistics.median(r.steps_per_cpu_s for r in runs) if runs else None
        )
        summary[f"{name}_page_faults_per_step"] = (
            statistics.median(r.page_faults / r.steps for r in runs) if runs else None
        )
    lightning = "lightning" in results
    for cpu, suffix in ((False, ""), (True, "_cpu")):
        summary[f"trainkit_vs_plain{suffix}"] = median_ratio(
            results["trainkit"], results["plain"], cpu
        )
        summary[f"trainkit_on_device_vs_plain{suffix}"] = median_ratio(
            results["trainkit_on_device"], results["plain"], cpu
        )
        summary[f"trainkit_vs_lightning{suffix}"] = (
            median_ratio(results["trainkit"], results["lightning"], cpu) if lightning else None
        )
        # What TensorBoard and the progress bar cost: 1 - (steps/s with them / without).
        summary[f"logging_cost{suffix}"] = 1 - median_ratio(
            results["trainkit_logging"], results["trainkit"], cpu
        )
    trainkit_losses = checks["trainkit"].epoch_losses
    difference = max_difference(trainkit_losses, checks["plain"].epoch_losses)
    on_device_difference = max_difference(
        checks["trainkit_on_device"].epoch_losses, checks["plain"].epoch_losses
    )
    summary.update(
        {
            "steps_per_s": {name: [r.steps_per_s for r in rs] for name, rs in results.items()},
            "page_faults_per_step": {
                name: [r.page_faults / r.steps for r in rs] for name, rs in results.items()
            },
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            # Some contender's fastest run was > 1.25x its slowest: other programs took turns
            # with this one (with several threads, one busy core stalls every step).
            "noisy": any(
                max(r.steps_per_s for r in rs) > 1.25 * min(r.steps_per_s for r in rs)
                for rs in results.values()
            ),
            "epoch_losses": {name: check.epoch_losses for name, check in checks.items()},
            "loss_difference_trainkit_plain": difference,
            "loss_difference_trainkit_on_device_plain": on_device_difference,
            "losses_equal_to_5_decimals": max(difference, on_device_difference) < 5e-6,
            "loss_difference_trainkit_lightning": (
                max_difference(trainkit_losses, checks["lightning"].epoch_losses)
                if lightning
                else None
            ),
            # Every timed run trained exactly as its contender's loss check did.
            "losses_same_every_run": all(
                run.epoch_losses == checks[name].epoch_losses[: len(run.epoch_losses)]
                for name, runs in results.items()
                for run in runs
            ),
            "steps_per_run": results["trainkit"][0].steps,
            "train_samples": train_samples,
            "repeats": args.repeats,
            "epochs": args.epochs,
            "check_epochs": args.check_epochs,
            "batches": args.batches,
            "threads": args.threads,
            "torch": torch.__version__,
            "lightning": lightning_version() if lightning else None,
        }
    )
    return summary


def console_is_terminal() -> bool:
    """Whether rich draws its progress bar (only on a terminal)."""
    from rich import get_console

    return get_console().is_terminal


def print_report(summary: dict, command: str) -> None:
    tunables = summary["glibc_tunables"]
    print(
        f"`{command}` ({summary['threads']} torch thread(s), torch {summary['torch']}"
        + (f", GLIBC_TUNABLES={tunables}" if tunables else "")
        + ")\n"
    )
    print(
        "| contender | steps/s, median (min-max) | steps per CPU-second, median "
        "| page faults per step, median |"
    )
    print("| --- | ---: | ---: | ---: |")
    for name, label in LABELS.items():
        runs = summary["steps_per_s"].get(name)
        if not runs:
            print(f"| {label} | not run | |")
            continue
        median, per_cpu = summary[f"{name}_steps_per_s"], summary[f"{name}_steps_per_cpu_s"]
        faults = summary[f"{name}_page_faults_per_step"]
        print(
            f"| {label} | {median:.2f} ({min(runs):.2f}-{max(runs):.2f}) | {per_cpu:.2f} "
            f"| {faults:,.0f} |"
        )
    print()
    print("Ratios (median of the ratios within each round; by wall time, by CPU time):\n")
    print(
        f"- trainkit / hand loop: {summary['trainkit_vs_plain']:.3f}, "
        f"{summary['trainkit_vs_plain_cpu']:.3f}"
    )
    print(
        f"- trainkit with data.on_device=true / hand loop: "
        f"{summary['trainkit_on_device_vs_plain']:.3f}, "
        f"{summary['trainkit_on_device_vs_plain_cpu']:.3f}"
    )
    if summary["trainkit_vs_lightning"] is not None:
        print(
            f"- trainkit / Lightning: {summary['trainkit_vs_lightning']:.3f}, "
            f"{summary['trainkit_vs_lightning_cpu']:.3f}"
        )
    drawn = "drawn on a terminal" if summary["progress_bar_drawn"] else "not drawn: no terminal"
    print(
        f"- TensorBoard + progress bar cost: {summary['logging_cost']:.1%}, "
        f"{summary['logging_cost_cpu']:.1%} of steps/s (bar {drawn})"
    )
    equal = "equal" if summary["losses_equal_to_5_decimals"] else "NOT equal"
    print(
        f"- per-epoch train losses, trainkit (on the device or not) vs hand loop: {equal} to "
        f"5 decimals (largest differences {summary['loss_difference_trainkit_plain']:.1e}, "
        f"{summary['loss_difference_trainkit_on_device_plain']:.1e})"
    )
    if summary["noisy"]:
        print(
            "- warning: some contender's fastest run was over 1.25x its slowest; the machine "
            "was busy: rerun when it is idle, or with --threads 1"
        )
    if summary.get("help_s") is None:
        return
    print("\nStartup (medians; from just before the process starts):\n")
    print(f"- `trainkit --help`: {summary['help_s']:.2f} s")
    print(
        f"- `python -c 'import torch'`, to the end of the import: {summary['import_torch_s']:.2f} s"
    )
    print(
        f"- hand-written script, to its first optimizer step: {summary['plain_first_step_s']:.2f} s"
    )
    print(
        f"- `trainkit train`, to its first optimizer step: {summary['first_step_s']:.2f} s "
        f"({summary['first_step_after_import_torch_s']:.2f} s after `import torch`, "
        f"{summary['first_step_after_plain_s']:.2f} s after the hand-written script)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run (default 1)")
    parser.add_argument(
        "--check-epochs", type=int, default=3, help="epochs of the loss check (default 3)"
    )
    parser.add_argument("--batches", type=int, default=0, help="train batches per epoch, 0: all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--startup", type=int, default=5, help="startup rounds, 0: skip")
    parser.add_argument("--no-lightning", action="store_true", help="leave Lightning out")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # stdout is for the report alone: the progress bar draws on stderr (when a terminal).
    with contextlib.redirect_stdout(sys.stderr):
        progress_bar_drawn = console_is_terminal()
        checks, results, train_samples = time_training(args, say)
        startup = time_startup(args.startup, say) if args.startup else {}
    summary = summarize(args, checks, results, train_samples)
    summary["progress_bar_drawn"] = progress_bar_drawn
    summary.update(startup)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary, " ".join(["python bench/bench.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
