"""Datasets, their train/val/test splits, and the loaders that feed the runner.

Every dataset builder returns a ``Splits``: three torch Datasets whose items are
``(input, target, index)``, where ``index`` is the sample's position in the original data
set (it becomes the ``index`` column of predictions.csv), plus what the model needs to
know about the data (number of classes, channels, image size).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from trainkit.errors import UserError
from trainkit.registry import (
    DATASETS,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Probability,
    Range,
    check_params,
)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # of one sample: (channels, height, width) or (features,)
    class_names: list[str] = field(default_factory=list)

    @property
    def image_size(self) -> tuple[int, int] | None:
        return tuple(self.input_shape[-2:]) if len(self.input_shape) == 3 else None


class TensorSplit(Dataset):
    """One split of an in-memory data set, fetched a batch at a time.

    ``__getitems__`` lets the DataLoader take a whole batch with one indexing operation
    instead of one Python call and one collate per sample.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor):
        self.inputs, self.targets, self.indices = inputs, targets, indices
        self.transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.inputs[i]
        return (self.transform(x) if self.transform else x), self.targets[i], self.indices[i]

    def __getitems__(self, batch: list[int]):
        rows = torch.as_tensor(batch)
        x = self.inputs[rows]
        if self.transform is not None:
            # Per sample, so each image gets its own random crop/flip.
            x = torch.stack([self.transform(image) for image in x])
        return x, self.targets[rows], self.indices[rows]


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a seeded, stratified train/val/test split (fractions of the whole set)."""
    from sklearn.model_selection import train_test_split

    if val_fraction + test_fraction >= 1:
        raise UserError(
            f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g}; "
            "they must sum to less than 1 so that some data is left to train on"
        )
    everything = np.arange(len(labels))
    n_test = round(len(labels) * test_fraction)
    n_val = round(len(labels) * val_fraction)
    rest, test = (everything, everything[:0])
    try:
        if n_test:
            rest, test = train_test_split(
                everything, test_size=n_test, stratify=labels, random_state=seed
            )
        train, val = (rest, rest[:0])
        if n_val:
            train, val = train_test_split(
                rest, test_size=n_val, stratify=labels[rest], random_state=seed + 1
            )
    except ValueError as error:  # too few samples of some class for a stratified split
        raise UserError(
            f"data: cannot split {len(labels)} samples of {len(np.unique(labels))} classes "
            f"with val_fraction={val_fraction:g} and test_fraction={test_fraction:g} "
            f"and keep every class in each split ({error})"
        ) from None
    return np.sort(train), np.sort(val), np.sort(test)


def _tensor_splits(
    inputs: np.ndarray, labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[TensorSplit, TensorSplit, TensorSplit]:
    """Split, then normalize every split with the train split's mean and std per channel."""
    train_idx, val_idx, test_idx = stratified_split(labels, val_fraction, test_fraction, seed)
    x = torch.as_tensor(inputs, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    channel_dims = [0, *range(2, x.ndim)]
    mean = x[train_idx].mean(dim=channel_dims, keepdim=True)
    std = x[train_idx].std(dim=channel_dims, keepdim=True).clamp_min(1e-6)
    x = (x - mean) / std
    return tuple(
        TensorSplit(x[idx].contiguous(), y[idx], torch.as_tensor(idx))
        for idx in (train_idx, val_idx, test_idx)
    )


# --- datasets ------------------------------------------------------------------------------


@DATASETS.register("digits")
def digits(
    val_fraction: Probability = 0.15, test_fraction: Probability = 0.15, seed: int = 0
) -> Splits:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grey images, 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images[:, None, :, :] / 16.0  # pixel values are 0..16
    train, val, test = _tensor_splits(images, bunch.target, val_fraction, test_fraction, seed)
    names = [str(c) for c in bunch.target_names]
    return Splits(train, val, test, num_classes=10, input_shape=(1, 8, 8), class_names=names)


@DATASETS.register("breast_cancer")
def breast_cancer(
    val_fraction: Probability = 0.15, test_fraction: Probability = 0.15, seed: int = 0
) -> Splits:
    """scikit-learn's bundled Wisconsin breast cancer set: 569 samples, 30 features, binary
    (class 0 malignant, 1 benign); features standardized with the train split's statistics."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    train, val, test = _tensor_splits(bunch.data, bunch.target, val_fraction, test_fraction, seed)
    names = [str(c) for c in bunch.target_names]
    return Splits(train, val, test, num_classes=2, input_shape=(30,), class_names=names)


@DATASETS.register("synthetic")
def synthetic(
    num_samples: PositiveInt = 600,
    num_classes: Annotated[int, Range(ge=2)] = 10,
    shape: list[PositiveInt] = (1, 8, 8),
    noise: NonNegativeFloat = 1.0,
    val_fraction: Probability = 0.15,
    test_fraction: Probability = 0.15,
    seed: int = 0,
) -> Splits:
    """Random class prototypes plus Gaussian noise: any input shape, learnable, no files."""
    generator = np.random.default_rng(seed)
    prototypes = generator.normal(size=(num_classes, *shape))
    labels = np.arange(num_samples) % num_classes
    inputs = prototypes[labels] + noise * generator.normal(size=(num_samples, *shape))
    train, val, test = _tensor_splits(inputs, labels, val_fraction, test_fraction, seed)
    names = [str(c) for c in range(num_classes)]
    return Splits(train, val, test, num_classes, input_shape=tuple(shape), class_names=names)


# --- loaders -------------------------------------------------------------------------------


@dataclass
class LoaderSettings:
    """The keys of the ``data`` node that shape batches rather than choose the data."""

    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt = 256
    num_workers: NonNegativeInt = 0
    pin_memory: bool = False


def split_data_node(node: Mapping[str, Any]) -> tuple[dict[str, Any], LoaderSettings]:
    """Separate the data node into the dataset's own keys and the loader settings."""
    loader_keys = set(LoaderSettings.__dataclass_fields__)
    dataset_node = {k: v for k, v in node.items() if k not in loader_keys}
    loader = {k: v for k, v in node.items() if k in loader_keys}
    return dataset_node, LoaderSettings(**check_params("data", loader, LoaderSettings))


def _keep_batch(batch):
    return batch


def build_loaders(
    splits: Splits, settings: LoaderSettings, seed: int, world_size: int = 1, rank: int = 0
) -> dict[str, DataLoader]:
    """One DataLoader per split; the train loader shuffles (seeded) and, under DDP, shards."""
    loaders = {}
    for split_name in ("train", "val", "test"):
        dataset = getattr(splits, split_name)
        training = split_name == "train"
        sampler = None
        if world_size > 1 and training:
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed)
        generator = torch.Generator().manual_seed(seed)
        batched = hasattr(dataset, "__getitems__")
        loaders[split_name] = DataLoader(
            dataset,
            batch_size=settings.batch_size if training else settings.eval_batch_size,
            shuffle=training and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=settings.num_workers,
            pin_memory=settings.pin_memory,
            persistent_workers=settings.num_workers > 0,
            collate_fn=_keep_batch if batched else None,
        )
    return loaders
