"""The data sets that need no download: scikit-learn's bundled sets and synthetic data."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from trainkit.data.preprocess import array_record, features_record, image_record
from trainkit.data.splits import Splits, TensorSplit, stratified_split, tensor_splits
from trainkit.errors import UserError
from trainkit.registry import DATASETS, NonNegativeFloat, PositiveInt, Probability, Range


@DATASETS.register("digits")
def digits(
    val_fraction: Probability = 0.15, test_fraction: Probability = 0.15, seed: int = 0
) -> Splits:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grey images, 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images[:, None, :, :] / 16.0  # pixel values are 0..16
    (train, val, test), (mean, std) = tensor_splits(
        images, bunch.target, val_fraction, test_fraction, seed
    )
    names = [str(c) for c in bunch.target_names]
    # An 8-bit grey image's pixel p stands for the digit's p / 255 (its 0..16 over 16).
    preprocessing = image_record(1, (8, 8), mean, std, scale=1 / 255)
    return Splits(
        train, val, test, num_classes=10, input_shape=(1, 8, 8), class_names=names,
        preprocessing=preprocessing,
    )  # fmt: skip


@DATASETS.register("breast_cancer")
def breast_cancer(
    val_fraction: Probability = 0.15, test_fraction: Probability = 0.15, seed: int = 0
) -> Splits:
    """scikit-learn's bundled Wisconsin breast cancer set: 569 samples, 30 features, binary
    (class 0 malignant, 1 benign); features standardized with the train split's statistics."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    (train, val, test), (mean, std) = tensor_splits(
        bunch.data, bunch.target, val_fraction, test_fraction, seed
    )
    names = [str(c) for c in bunch.target_names]
    preprocessing = features_record(bunch.feature_names, mean, std)
    return Splits(
        train, val, test, num_classes=2, input_shape=(30,), class_names=names,
        preprocessing=preprocessing,
    )  # fmt: skip


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
    (train, val, test), (mean, std) = tensor_splits(
        inputs, labels, val_fraction, test_fraction, seed
    )
    names = [str(c) for c in range(num_classes)]
    return Splits(
        train, val, test, num_classes, input_shape=tuple(shape), class_names=names,
        preprocessing=array_record(shape, mean, std),
    )  # fmt: skip


@DATASETS.register("diabetes")
def diabetes(
    val_fraction: Probability = 0.15, test_fraction: Probability = 0.15, seed: int = 0
) -> Splits:
    """scikit-learn's bundled diabetes set: 442 patients, 10 standardized features, and a
    continuous target (disease progression after one year, 25 to 346). The split is
    stratified by target quintile, so every split spans the whole range."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    quintiles = np.searchsorted(np.quantile(bunch.target, [0.2, 0.4, 0.6, 0.8]), bunch.target)
    train_idx, val_idx, test_idx = stratified_split(quintiles, val_fraction, test_fraction, seed)
    x = torch.as_tensor(bunch.data, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.float32)
    mean, std = x[train_idx].mean(dim=0), x[train_idx].std(dim=0)
    x = (x - mean) / std
    train, val, test = (
        TensorSplit(x[idx].contiguous(), y[idx], torch.as_tensor(idx))
        for idx in (train_idx, val_idx, test_idx)
    )
    target_scale = (y[train_idx].mean().item(), y[train_idx].std().item())
    return Splits(
        train,
        val,
        test,
        num_classes=1,  # one continuous target
        input_shape=(10,),
        target_kind="continuous",
        target_scale=target_scale,
        preprocessing=features_record(bunch.feature_names, mean.tolist(), std.tolist()),
    )


@DATASETS.register("digit_strings")
def digit_strings(
    num_strings: PositiveInt = 4000,
    min_length: PositiveInt = 3,
    max_length: PositiveInt = 5,
    val_fraction: Probability = 0.15,
    test_fraction: Probability = 0.15,
    seed: int = 0,
) -> Splits:
    """Strings of ``min_length`` to ``max_length`` bundled digit images side by side, each an
    8 x (8 * max_length) image whose label is its digit sequence, for CTC.

    The digit images are split first, so a test string is made of digits never trained on.
    The string starts at a random offset within the free width. Targets are the digits + 1
    (0 is CTC's blank), padded with 0 to ``max_length``.
    """
    from sklearn.datasets import load_digits

    if min_length > max_length:
        raise UserError(
            f"data.min_length={min_length} is above data.max_length={max_length}; "
            "set min_length <= max_length"
        )
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = bunch.target
    digit_splits = stratified_split(labels, val_fraction, test_fraction, seed)
    string_counts = [
        num_strings - round(num_strings * val_fraction) - round(num_strings * test_fraction),
        round(num_strings * val_fraction),
        round(num_strings * test_fraction),
    ]
    generator = np.random.default_rng(seed)
    parts, first_index = [], 0
    for digit_indices, count in zip(digit_splits, string_counts, strict=True):
        inputs = torch.zeros(count, 1, 8, 8 * max_length)
        targets = torch.zeros(count, max_length, dtype=torch.long)
        for row in range(count):
            length = int(generator.integers(min_length, max_length + 1))
            chosen = generator.choice(digit_indices, size=length)
            offset = int(generator.integers(0, 8 * (max_length - length) + 1))
            for position, digit in enumerate(chosen):
                start = offset + 8 * position
                inputs[row, 0, :, start : start + 8] = images[digit]
            targets[row, :length] = torch.as_tensor(labels[chosen] + 1)
        indices = torch.arange(first_index, first_index + count)
        parts.append((inputs, targets, indices))
        first_index += count
    mean, std = parts[0][0].mean(), parts[0][0].std()
    train, val, test = (TensorSplit((x - mean) / std, y, i) for x, y, i in parts)
    names = ["<blank>", *(str(d) for d in range(10))]
    return Splits(
        train,
        val,
        test,
        num_classes=11,  # the blank and ten digits
        input_shape=(1, 8, 8 * max_length),
        class_names=names,
        target_kind="sequence",
        preprocessing=image_record(1, (8, 8 * max_length), [mean.item()], [std.item()]),
    )
