"""The data sets that need no download: scikit-learn's bundled sets and synthetic data."""

from __future__ import annotations

from typing import Annotated

import numpy as np

from trainkit.data.splits import Splits, tensor_splits
from trainkit.registry import DATASETS, NonNegativeFloat, PositiveInt, Probability, Range


@DATASETS.register("digits")
def digits(
    val_fraction: Probability = 0.15, test_fraction: Probability = 0.15, seed: int = 0
) -> Splits:
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grey images, 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images[:, None, :, :] / 16.0  # pixel values are 0..16
    train, val, test = tensor_splits(images, bunch.target, val_fraction, test_fraction, seed)
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
    train, val, test = tensor_splits(bunch.data, bunch.target, val_fraction, test_fraction, seed)
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
    train, val, test = tensor_splits(inputs, labels, val_fraction, test_fraction, seed)
    names = [str(c) for c in range(num_classes)]
    return Splits(train, val, test, num_classes, input_shape=tuple(shape), class_names=names)
