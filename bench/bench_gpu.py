"""trainkit's training loop against a hand-written loop on a GPU: images/s of a ResNet-18.

    python bench/bench_gpu.py [--batches N] [--batch-size B] [--rounds R] [--epochs E]
                              [--warmup-epochs W] [--compile both|off|on] [--precision bf16|32]
                              [--trainkit-data auto|device|loader] [--channels-last on|off]
                              [--budget-s S]
                              [--device cuda|cpu] [--json] [--out PATH]

One workload, trained two ways in one process: CIFAR-shaped synthetic data (trainkit's
``data=synthetic``, 3x32x32, 10 classes, ``--batches`` x ``--batch-size`` train images),
torchvision's ResNet-18 with the CIFAR stem (``model=resnet18 model.stem=cifar``), SGD
(lr 0.1, momentum 0.9, weight decay 5e-4 on every parameter), a constant lr, bf16 autocast,
channels-last memory, cuDNN autotuning, seed 0; with ``torch.compile`` off and on. Each
switch can be turned off (``--precision 32``, ``--channels-last off``, ``--compile off``,
``--trainkit-data loader``) to measure what it gains.

- trainkit: ``Runner.train_epoch()`` on the composed config, TensorBoard and the progress
  bar off; its data on the GPU (``data.on_device=true``) where trainkit has that key, else
  fed by its DataLoader from pinned memory (``--trainkit-data`` picks).
- plain: the loop one writes by hand: the whole train split on the GPU, each batch indexed
  with the epoch's permutation, channels-last (when on), forward and cross-entropy under autocast,
  backward, step; the model ``torch.compile``'d the same way when compiling.

Both get the same tensors (trainkit's own data set), the same initial weights (trainkit's
model registry after the same seed) and the same sample order (trainkit's seeded per-epoch
permutation). Each contender is built once per setting and trains on from there: first
``--warmup-epochs`` untimed (compiling, cuDNN autotuning), then timed epochs, the two taking
turns, the first of each round alternating, for ``--rounds`` rounds, with
``torch.cuda.synchronize()`` around each timed stretch. Reported per setting: each
contender's median images/s and the median of the per-round ratios trainkit / hand loop;
and the largest difference between their per-epoch train losses (bf16 and cuDNN's choice of
algorithms make them close, not equal). Rounds stop early when the next one would overrun
``--budget-s``; progress goes to stderr as it happens, and ``--out`` gets the JSON after
each setting.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

# trainkit is imported where it is used, after the device check: a machine without CUDA is
# told so in about a second rather than after trainkit's imports.

NUM_CLASSES = 10
EVAL_SAMPLES = 2 * NUM_CLASSES  # per split: val and test are built, never used here


@dataclass
class Contender:
    """One way of training, built once per setting; ``train(epochs)`` returns the mean train
    loss of each epoch."""

    train: Callable[[int], list[float]]
    close: Callable[[], None] = lambda: None
    warmup_s: float = 0.0
    images_per_s: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)


def workload(args: argparse.Namespace, compile_model: bool) -> list[str]:
    """The overrides of trainkit's config for one setting."""
    train_samples = args.batches * args.batch_size
    total = train_samples + 2 * EVAL_SAMPLES
    return [
        "data=synthetic",
        "data.shape=[3,32,32]",
        f"data.num_classes={NUM_CLASSES}",
        f"data.num_samples={total}",
        # Exact fractions: the train split is whole batches (no odd last batch to recompile).
        f"data.val_fraction={EVAL_SAMPLES / total!r}",
        f"data.test_fraction={EVAL_SAMPLES / total!r}",
        f"data.batch_size={args.batch_size}",
        "model=resnet18",
        "model.stem=cifar",
        "optimizer=sgd",
        "optimizer.lr=0.1",
        "optimizer.momentum=0.9",
        "optimizer.weight_decay=5e-4",
        "optimizer.decay_norm_and_bias=true",  # one parameter group, as in the hand loop
        "scheduler=constant",
        "augmentation=none",
        "logger.tensorboard=false",
        "logger.progress_bar=false",
        "trainer.seed=0",
        f"trainer.device={args.device}",
        f"trainer.precision={args.precision}",
        f"trainer.channels_last={str(args.channels_last == 'on').lower()}",
        "trainer.cudnn_benchmark=true",
        f"trainer.compile={str(compile_model).lower()}",
    ]


def compose(overrides: list[str]):
    from trainkit import config

    cfg = config.compose(config.prepare(overrides))
    config.validate(cfg)
    return cfg


def trainkit_data_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """How trainkit gets its batches: ``device`` (data.on_device=true: the data set on the
    GPU, batches cut there) or ``loader`` (its DataLoader, from pinned memory on a GPU)."""
    from trainkit.errors import UserError

    on_gpu = torch.device(args.device).type == "cuda"
    mode = args.trainkit_data
    if mode == "device" or (mode == "auto" and on_gpu):
        try:
            compose([*workload(args, False), "++data.on_device=true"])
            mode = "device"
        except UserError as error:
            if "on_device" not in str(error):
                raise
            if mode == "device":
                raise UserError(
                    "this trainkit has no data.on_device key; use --trainkit-data loader"
                ) from None
    if mode == "device":
        return mode, ["++data.on_device=true"]
    return "loader", ["data.pin_memory=true"] if on_gpu else []


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- trainkit ----------------------------------------------------------------------------


def build_trainkit(cfg) -> Contender:
    """A Runner, as a contender that calls its ``train_epoch()`` as ``fit`` does."""
    from trainkit.runner import Runner

    run_dir = tempfile.TemporaryDirectory()
    runner = Runner(cfg, Path(run_dir.name))

    def train(epochs: int) -> list[float]:
        losses = []
        for _ in range(epochs):
            losses.append(runner.train_epoch()["train/loss"])
            runner.epoch += 1
        return losses

    def close() -> None:
        runner.logger.close()
        run_dir.cleanup()

    return Contender(train, close)


# --- the hand-written loop -----------------------------------------------------------------


def build_plain(cfg, splits, device: torch.device) -> Contender:
    """The loop as one writes it by hand for a data set that fits on the GPU."""
    from trainkit.registry import MODELS

    seed, batch_size, opt = cfg.trainer.seed, cfg.data.batch_size, cfg.optimizer
    dtype = torch.bfloat16 if cfg.trainer.precision == "bf16" else None
    torch.manual_seed(seed)
    model = MODELS.build(
        cfg.model, "model", num_classes=splits.num_classes, input_shape=splits.input_shape
    )
    layout = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=layout)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
    )
    train_model = torch.compile(model) if cfg.trainer.compile else model
    # cuDNN autotuning: trainkit's Runner, built first, has turned it on for the process.
    inputs_all = splits.train.inputs.to(device)
    targets_all = splits.train.targets.to(device)
    count = len(targets_all)
    epoch = 0

    def train(epochs: int) -> list[float]:
        nonlocal epoch
        losses = []
        for _ in range(epochs):
            # trainkit's shuffle (DistributedSampler's): a permutation seeded with seed + epoch.
            generator = torch.Generator().manual_seed(seed + epoch)
            order = torch.randperm(count, generator=generator).to(device)
            train_model.train()
            loss_sum = torch.zeros((), device=device)
            for start in range(0, count, batch_size):
                rows = order[start : start + batch_size]
                inputs = inputs_all[rows].contiguous(memory_format=layout)
                targets = targets_all[rows]
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = F.cross_entropy(train_model(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach().float() * len(rows)
            losses.append(loss_sum.item() / count)
            epoch += 1
        return losses

    return Contender(train)


# --- one setting: build, warm up, timed rounds ---------------------------------------------


def run_setting(
    args: argparse.Namespace,
    compile_model: bool,
    data_overrides: list[str],
    splits,
    deadline: float,
    say: Callable[[str], None],
) -> dict:
    """Both contenders for one compile setting; returns its part of the JSON object."""
    label = "compile on" if compile_model else "compile off"
    device = torch.device(args.device)
    cfg = compose([*workload(args, compile_model), *data_overrides])
    say(f"{label}: building trainkit's Runner and the hand loop")
    trainkit = build_trainkit(cfg)
    contenders = {"trainkit": trainkit, "plain": build_plain(cfg, splits, device)}
    images = args.epochs * args.batches * args.batch_size
    try:
        for name, contender in contenders.items():
            synchronize(device)
            started = time.perf_counter()
            contender.epoch_losses += contender.train(args.warmup_epochs)
            synchronize(device)
            contender.warmup_s = time.perf_counter() - started
            say(
                f"{label}: warm-up (untimed) {name}, {args.warmup_epochs} epoch(s): "
                f"{contender.warmup_s:.1f} s, losses {format_losses(contender.epoch_losses)}"
            )
        names = list(contenders)
        round_s = 0.0
        for round_index in range(args.rounds):
            if round_index and time.perf_counter() + round_s > deadline:
                say(f"{label}: stopping after {round_index} round(s): --budget-s reached")
                break
            round_started = time.perf_counter()
            order = names if round_index % 2 == 0 else names[::-1]
            for name in order:
                contender = contenders[name]
                synchronize(device)
                started = time.perf_counter()
                losses = contender.train(args.epochs)
                synchronize(device)
                contender.images_per_s.append(images / (time.perf_counter() - started))
                contender.epoch_losses += losses
            round_s = time.perf_counter() - round_started
            say(
                f"{label}: round {round_index + 1}/{args.rounds}: "
                + ", ".join(f"{n} {contenders[n].images_per_s[-1]:,.0f}" for n in names)
                + " images/s"
            )
    finally:
        for contender in contenders.values():
            contender.close()
    return summarize_setting(contenders)


def format_losses(losses: list[float]) -> str:
    return ", ".join(f"{loss:.5f}" for loss in losses)


def summarize_setting(contenders: dict[str, Contender]) -> dict:
    trainkit, plain = contenders["trainkit"], contenders["plain"]
    ratios = [a / b for a, b in zip(trainkit.images_per_s, plain.images_per_s, strict=True)]
    differences = [
        abs(a - b) for a, b in zip(trainkit.epoch_losses, plain.epoch_losses, strict=True)
    ]
    return {
        "trainkit_images_per_s": statistics.median(trainkit.images_per_s),
        "plain_images_per_s": statistics.median(plain.images_per_s),
        # The median of the ratios within each round: it holds when the GPU's clock drifts.
        "trainkit_vs_plain": statistics.median(ratios),
        "rounds_done": len(ratios),
        "images_per_s": {name: c.images_per_s for name, c in contenders.items()},
        "warmup_s": {name: c.warmup_s for name, c in contenders.items()},
        "epoch_losses": {name: c.epoch_losses for name, c in contenders.items()},
        "first_epoch_loss_difference": differences[0],
        "max_loss_difference": max(differences),
    }


# --- report --------------------------------------------------------------------------------


def describe_device(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"gpu": None, "cuda": None, "cudnn": None}
    return {
        "gpu": torch.cuda.get_device_name(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def print_report(summary: dict, command: str) -> None:
    where = summary["gpu"] or summary["device"]
    versions = f"torch {summary['torch']}"
    if summary["cuda"]:
        versions += f", CUDA {summary['cuda']}, cuDNN {summary['cudnn']}"
    print(f"`{command}` on {where} ({versions})\n")
    feed = {
        "device": "data.on_device=true (the data set on the device, batches cut there)",
        "loader": "its DataLoader" + (" from pinned memory" if summary["cuda"] else ""),
    }[summary["trainkit_data"]]
    autotune = ", cudnn.benchmark" if summary["cudnn_benchmark"] else ""
    print(
        f"ResNet-18 (CIFAR stem), synthetic 3x32x32, {NUM_CLASSES} classes, "
        f"{summary['train_samples']:,} train images, batch {summary['batch_size']}, SGD "
        f"momentum 0.9, precision {summary['precision']}, "
        f"channels_last {'on' if summary['channels_last'] else 'off'}{autotune}, "
        f"{summary['warmup_epochs']} warm-up epoch(s), {summary['epochs']} epoch(s) per timed "
        f"run; trainkit fed by {feed}\n"
    )
    print(
        "| setting | trainkit images/s, median (min-max) | hand loop images/s, median "
        "(min-max) | trainkit / hand loop | rounds | warm-up s (trainkit, hand loop) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key, result in summary["settings"].items():
        runs = result["images_per_s"]
        cells = [
            f"{result[f'{name}_images_per_s']:,.0f} ({min(runs[name]):,.0f}-{max(runs[name]):,.0f})"
            for name in ("trainkit", "plain")
        ]
        warmup = result["warmup_s"]
        print(
            f"| {key.replace('_', ' ')} | {cells[0]} | {cells[1]} | "
            f"{result['trainkit_vs_plain']:.3f} | {result['rounds_done']} | "
            f"{warmup['trainkit']:.1f}, {warmup['plain']:.1f} |"
        )
    print()
    for key, result in summary["settings"].items():
        print(
            f"- {key.replace('_', ' ')}: per-epoch train losses, trainkit vs hand loop: first "
            f"epoch {result['epoch_losses']['trainkit'][0]:.5f} vs "
            f"{result['epoch_losses']['plain'][0]:.5f}, largest difference over "
            f"{len(result['epoch_losses']['plain'])} epochs {result['max_loss_difference']:.1e}"
        )


def write_out(summary: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=200, help="steps per epoch (default 200)")
    parser.add_argument("--batch-size", type=int, default=256, help="default 256")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run (default 1)")
    parser.add_argument(
        "--warmup-epochs", type=int, default=1, help="untimed epochs first (default 1)"
    )
    parser.add_argument("--compile", choices=["both", "off", "on"], default="both")
    parser.add_argument("--precision", choices=["bf16", "32"], default="bf16")
    parser.add_argument("--channels-last", choices=["on", "off"], default="on")
    parser.add_argument(
        "--trainkit-data",
        choices=["auto", "device", "loader"],
        default="auto",
        help="auto: data.on_device=true on a GPU where trainkit has the key, else its loader",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420,
        help="seconds for the whole run; rounds stop early to keep to it (default 420)",
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    for name in ("batches", "batch_size", "rounds", "epochs", "warmup_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(
            "bench_gpu: no CUDA GPU is visible; run it on one, or smoke-test with --device cpu",
            file=sys.stderr,
        )
        sys.exit(2)
    started = time.perf_counter()
    deadline = started + args.budget_s

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    from trainkit.build import build_data
    from trainkit.errors import UserError

    device = torch.device(args.device)
    settings = {"both": [False, True], "off": [False], "on": [True]}[args.compile]
    summary = {
        "device": str(device),
        **describe_device(device),
        "torch": torch.__version__,
        "precision": args.precision,
        "channels_last": args.channels_last == "on",
        "cudnn_benchmark": device.type == "cuda",  # trainkit ignores it elsewhere
        "batch_size": args.batch_size,
        "steps_per_epoch": args.batches,
        "train_samples": args.batches * args.batch_size,
        "rounds": args.rounds,
        "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs,
        "settings": {},
        "complete": False,
    }
    say(
        f"{summary['gpu'] or device}, torch {torch.__version__}, "
        f"{summary['train_samples']:,} train images, batch {args.batch_size}, "
        f"precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}"
    )
    try:
        # stdout is for the report alone: anything trainkit prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            mode, data_overrides = trainkit_data_overrides(args)
            summary["trainkit_data"] = mode
            say(f"trainkit data: {mode} {' '.join(data_overrides)}".rstrip())
            # The hand loop's tensors: trainkit's data set, built as its Runner builds it.
            plain_cfg = compose(workload(args, False))
            splits, _ = build_data(plain_cfg, plain_cfg.trainer.seed)
            for index, compile_model in enumerate(settings):
                now = time.perf_counter()
                # This setting's share of the time left; a later one gets what it leaves.
                share = now + (deadline - now) / (len(settings) - index)
                key = "compile_on" if compile_model else "compile_off"
                summary["settings"][key] = run_setting(
                    args, compile_model, data_overrides, splits, share, say
                )
                write_out(summary, args.out)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    except UserError as error:
        print(f"bench_gpu: {error}", file=sys.stderr)
        sys.exit(2)
    summary["complete"] = True
    summary["total_s"] = time.perf_counter() - started
    write_out(summary, args.out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary, " ".join(["python bench/bench_gpu.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
