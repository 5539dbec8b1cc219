"""Tiny fake image data sets written in the on-disk formats trainkit reads, for tests.

``make_cifar10(root)`` and friends write the files torchvision's downloads leave in ``root``,
so ``data=cifar10 data.root=<root> data.download=false`` loads them without network. Every
class appears in train and test, enough times for the default stratified val split. Each
class is a brightness level plus noise, so a model can learn something.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def fake_images(classes: int, per_class: int, shape: tuple[int, ...], seed: int = 0):
    """``classes * per_class`` uint8 images of ``shape``, classes in turn, and their labels."""
    generator = np.random.default_rng(seed)
    labels = np.arange(classes * per_class) % classes
    levels = (labels * 255 / max(classes - 1, 1)).reshape(-1, *[1] * len(shape))
    noise = generator.normal(0, 20, size=(len(labels), *shape))
    return np.clip(levels + noise, 0, 255).astype(np.uint8), labels


def _pickle(path: Path, entry: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


def make_cifar10(root: Path, per_class: int = 10, test_per_class: int = 5) -> Path:
    """``root/cifar-10-batches-py``: five train batches, a test batch and batches.meta."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = fake_images(10, per_class, (3, 32, 32))
    for batch, rows in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        data = images[rows].reshape(len(rows), -1)
        _pickle(folder / f"data_batch_{batch}", {"data": data, "labels": labels[rows].tolist()})
    images, labels = fake_images(10, test_per_class, (3, 32, 32), seed=1)
    _pickle(
        folder / "test_batch", {"data": images.reshape(len(labels), -1), "labels": list(labels)}
    )
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_CLASSES})
    return folder


def make_cifar100(root: Path, per_class: int = 10, test_per_class: int = 1) -> Path:
    """``root/cifar-100-python``: train, test and meta (fine labels 0-99, 20 coarse ones).

    Ten per class: the default val split (10%) needs at least one sample of each class.
    """
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, count, seed in (("train", per_class, 0), ("test", test_per_class, 1)):
        images, labels = fake_images(100, count, (3, 32, 32), seed)
        entry = {
            "data": images.reshape(len(labels), -1),
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
        }
        _pickle(folder / file_name, entry)
    meta = {
        "fine_label_names": [f"class_{i}" for i in range(100)],
        "coarse_label_names": [f"superclass_{i}" for i in range(20)],
    }
    _pickle(folder / "meta", meta)
    return folder


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format of MNIST: a big-endian magic (0x08 = unsigned bytes, then the number of
    dimensions), each dimension's size as a big-endian int32, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _make_mnist_format(raw: Path, per_class: int, test_per_class: int) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", per_class, 0), ("t10k", test_per_class, 1)):
        images, labels = fake_images(10, count, (28, 28), seed)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


def make_mnist(root: Path, per_class: int = 10, test_per_class: int = 5) -> Path:
    """``root/MNIST/raw``: the four uncompressed idx files."""
    return _make_mnist_format(Path(root) / "MNIST" / "raw", per_class, test_per_class)


def make_fashion_mnist(root: Path, per_class: int = 10, test_per_class: int = 5) -> Path:
    """``root/FashionMNIST/raw``: the four uncompressed idx files."""
    return _make_mnist_format(Path(root) / "FashionMNIST" / "raw", per_class, test_per_class)


def make_imagefolder(
    root: Path,
    classes: int = 3,
    per_class: int = 10,
    size: tuple[int, int] = (40, 30),
    splits: tuple[str, ...] = ("train", "val"),
) -> Path:
    """``root/<split>/class_<i>/<n>.png`` for each split: RGB PNGs of ``size`` (width, height),
    ``per_class`` of each class in train and half as many (at least 2) in the others."""
    for split_number, split in enumerate(splits):
        count = per_class if split == "train" else max(2, per_class // 2)
        width, height = size
        images, labels = fake_images(classes, count, (height, width, 3), seed=split_number)
        for n, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = Path(root) / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{n}.png")
    return Path(root)
