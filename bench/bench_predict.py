"""Images per second of `trainkit predict` on a folder, against a hand-written loop.

Both run in this process, taking turns: trainkit's ``predict`` (what the command runs after
parsing its arguments) and a loop a user would write for the same job: list the folder,
decode each batch of files with Pillow, convert, resize, crop and normalize them as the run's
evaluation did, run the model, take the top 5 classes, write one CSV row per file. Same model
(a ResNet-8 trained a few steps on the folder's classes), same files, same batch size, same
decode; the rows must agree. ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainkit import checkpoint, config  # noqa: E402
from trainkit.prediction import predict  # noqa: E402
from trainkit.registry import MODELS, load_components  # noqa: E402
from trainkit.runner import Runner  # noqa: E402

CLASSES = 4


def make_images(root: Path, count: int, size: tuple[int, int]) -> Path:
    """``count`` RGB PNGs of ``size`` (width, height) in class folders of train/, and a few
    in val/: each class a brightness level plus noise."""
    generator = np.random.default_rng(0)
    width, height = size
    for n in range(count + 4 * CLASSES):
        label = n % CLASSES
        level = 40 + label * 60
        pixels = np.clip(level + generator.normal(0, 25, (height, width, 3)), 0, 255)
        folder = root / ("train" if n < count else "val") / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{n:05d}.png")
    return root


def train_model(images: Path, run_dir: Path) -> Path:
    """A checkpoint of a small ResNet trained a few steps on the images (its evaluation
    preprocessing: shorter side to 36, center crop 32, ImageNet's mean and std)."""
    overrides = [
        "data=imagefolder",
        f"data.root={images}",
        "data.image_size=32",
        "data.resize=36",
        "data.num_workers=0",
        "model=resnet_cifar",
        "model.depth=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_eval_batches=1",
        "logger.progress_bar=false",
        "logger.tensorboard=false",
    ]
    Runner(config.compose(config.prepare(overrides)), run_dir).fit()
    return checkpoint.find(run_dir)


def hand_loop(best: Path, folder: Path, output: Path, batch_size: int) -> int:
    """What a user writes by hand: the same model, decode and rows as trainkit predict."""
    from torchvision.transforms.v2 import functional as F

    state = torch.load(best, map_location="cpu", weights_only=True)
    data = state["data"]
    record, names = data["preprocessing"], data["class_names"]
    model_node = dict(state["config"]["model"])
    model = MODELS.build(
        model_node, "model", num_classes=len(names), input_shape=tuple(data["input_shape"])
    )
    model.load_state_dict(state["evaluation_model"])
    model.eval()
    mean = torch.tensor(record["mean"]).view(-1, 1, 1)
    std = torch.tensor(record["std"]).view(-1, 1, 1)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".png")
    with open(output, "w", newline="") as handle, torch.no_grad():
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["input", "prediction", "prob", "top5"])
        for start in range(0, len(files), batch_size):
            batch = files[start : start + batch_size]
            tensors = []
            for path in batch:
                with Image.open(path) as image:
                    x = F.pil_to_tensor(image.convert("RGB")).float()
                x = F.center_crop(F.resize(x, record["resize"], antialias=True), record["size"])
                tensors.append((x * record["scale"] - mean) / std)
            probs = model(torch.stack(tensors)).softmax(dim=1)
            top = probs.topk(min(5, len(names)), dim=1)
            for path, values, indices in zip(batch, top.values, top.indices, strict=True):
                classes = [names[i] for i in indices.tolist()]
                writer.writerow([path, classes[0], f"{values[0].item():.6g}", " ".join(classes)])
    return len(files)


def first_choices(path: Path) -> list[tuple[str, str]]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return [(Path(row["input"]).name, row["prediction"]) for row in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="PNG files (default 2000)")
    parser.add_argument("--size", type=int, nargs=2, default=[48, 40], help="width height")
    parser.add_argument("--batch-size", type=int, default=256, help="default 256")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_components()
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        images = make_images(scratch / "images", args.images, tuple(args.size))
        best = train_model(images, scratch / "run")
        folder = images / "train"

        def run_trainkit(output: Path) -> int:
            done = predict(best, [folder], output, [], topk=5, batch_size=args.batch_size)
            return done["rows"]

        def run_plain(output: Path) -> int:
            return hand_loop(best, folder, output, args.batch_size)

        contenders = {"trainkit": run_trainkit, "plain": run_plain}
        # Untimed: a warm-up, and the check that both predict the same class for each file.
        choices = {}
        for name, run in contenders.items():
            run(scratch / f"check_{name}.csv")
            choices[name] = first_choices(scratch / f"check_{name}.csv")
        same = choices["trainkit"] == choices["plain"]

        rates: dict[str, list[float]] = {name: [] for name in contenders}
        ratios = []
        for round_number in range(args.repeats):
            order = list(contenders) if round_number % 2 == 0 else list(contenders)[::-1]
            this_round = {}
            for name in order:
                output = scratch / f"{name}_{round_number}.csv"
                started = time.perf_counter()
                count = contenders[name](output)
                this_round[name] = count / (time.perf_counter() - started)
                rates[name].append(this_round[name])
            ratios.append(this_round["trainkit"] / this_round["plain"])
            say(
                f"round {round_number + 1}: trainkit {this_round['trainkit']:.0f} images/s, "
                f"hand loop {this_round['plain']:.0f} images/s"
            )

    summary = {
        "images": args.images,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "trainkit_images_per_s": statistics.median(rates["trainkit"]),
        "plain_images_per_s": statistics.median(rates["plain"]),
        "trainkit_vs_plain": statistics.median(ratios),
        "same_predictions": same,
        "rates": rates,
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(
        f"trainkit predict: {summary['trainkit_images_per_s']:.0f} images/s, hand loop: "
        f"{summary['plain_images_per_s']:.0f} images/s, ratio {summary['trainkit_vs_plain']:.3f}"
        f" (median of {args.repeats} rounds); same predictions: {same}"
    )


if __name__ == "__main__":
    main()
