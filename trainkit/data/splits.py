"""The ``Splits`` a data set builder returns, in-memory splits, the stratified split, and the
check that class labels fit the number of classes."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from trainkit.errors import UserError


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # of one sample: (channels, height, width) or (features,)
    class_names: list[str] = field(default_factory=list)
    # What the targets are, so a run can check its task fits: "class" (an index per sample),
    # "continuous" (regression values) or "sequence" (label sequences, padded with 0).
    target_kind: str = "class"
    vocab_size: int | None = None  # token inputs: the vocabulary's size, padding index 0
    # Continuous targets: the train split's (mean, std); regression models learn
    # (target - mean) / std, and predictions are mapped back.
    target_scale: tuple[float, float] | None = None
    # How a raw sample becomes a model input, as plain data (trainkit.data.preprocess): what
    # `trainkit predict` applies to new files. None: a data set that cannot say.
    preprocessing: dict | None = None

    def description(self) -> dict:
        """What a model needs to know of its data, without the data: checkpoints keep it,
        so that a model can be rebuilt and fed new inputs (``described``)."""
        return {
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "target_kind": self.target_kind,
            "vocab_size": self.vocab_size,
            "target_scale": list(self.target_scale) if self.target_scale else None,
            "preprocessing": self.preprocessing,
        }

    @classmethod
    def described(cls, description: dict) -> Splits:
        """Splits without samples, as ``description`` tells them."""
        empty = TensorSplit(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))
        scale = description.get("target_scale")
        return cls(
            empty,
            empty,
            empty,
            num_classes=description["num_classes"],
            input_shape=tuple(description["input_shape"]),
            class_names=list(description["class_names"]),
            target_kind=description["target_kind"],
            vocab_size=description["vocab_size"],
            target_scale=tuple(scale) if scale else None,
            preprocessing=description.get("preprocessing"),
        )

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


# data.folds and data.fold, set by the assembly around a data set's builder and read by
# stratified_split, which every builder that carves its val split from train calls: one
# place for k-fold cross-validation, whatever the data set. [folds, fold, used]
_FOLDS: contextvars.ContextVar[list | None] = contextvars.ContextVar("folds", default=None)


@contextlib.contextmanager
def k_fold(folds: int, fold: int) -> Iterator[list]:
    """While a data set is built: its carved val split is fold ``fold`` of ``folds``
    (stratified) of what is not test. Yields ``[folds, fold, used]``; ``used`` is true after
    if the builder carved a val split (folds=0: nothing changes)."""
    state = [folds, fold, False]
    token = _FOLDS.set(state if folds else None)
    try:
        yield state
    finally:
        _FOLDS.reset(token)


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a seeded, stratified train/val/test split (fractions of the whole set).
    Under ``k_fold``, val is one stratified fold of what is not test (``val_fraction`` is
    then not used, but must be above 0: 0 means the caller carves no val split)."""
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
        folding = _FOLDS.get()
        if folding and val_fraction > 0:
            train, val = _fold_of(rest, labels[rest], *folding[:2], seed)
            folding[2] = True
        elif n_val:
            train, val = train_test_split(
                rest, test_size=n_val, stratify=labels[rest], random_state=seed + 1
            )
    except ValueError as error:  # too few samples of some class for a stratified split
        how = (
            f"into data.folds={_FOLDS.get()[0]} stratified folds"
            if _FOLDS.get()
            else f"with val_fraction={val_fraction:g} and test_fraction={test_fraction:g}"
        )
        raise UserError(
            f"data: cannot split {len(labels)} samples of {len(np.unique(labels))} classes "
            f"{how} and keep every class in each split ({error})"
        ) from None
    return np.sort(train), np.sort(val), np.sort(test)


def _fold_of(
    rows: np.ndarray, labels: np.ndarray, folds: int, fold: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` cut into ``folds`` stratified folds (seeded): all but fold ``fold``, and it."""
    from sklearn.model_selection import StratifiedKFold

    cut = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + 1)
    train, val = list(cut.split(rows, labels))[fold]
    return rows[train], rows[val]


def tensor_splits(
    inputs: np.ndarray, labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[tuple[TensorSplit, TensorSplit, TensorSplit], tuple[list[float], list[float]]]:
    """Split, then normalize every split with the train split's mean and std per channel
    (per feature, for rows of features); returns the splits and that (mean, std)."""
    train_idx, val_idx, test_idx = stratified_split(labels, val_fraction, test_fraction, seed)
    x = torch.as_tensor(inputs, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    channel_dims = [0, *range(2, x.ndim)]
    mean = x[train_idx].mean(dim=channel_dims, keepdim=True)
    std = x[train_idx].std(dim=channel_dims, keepdim=True).clamp_min(1e-6)
    x = (x - mean) / std
    splits = tuple(
        TensorSplit(x[idx].contiguous(), y[idx], torch.as_tensor(idx))
        for idx in (train_idx, val_idx, test_idx)
    )
    return splits, (mean.flatten().tolist(), std.flatten().tolist())


def class_labels(dataset: Dataset) -> torch.Tensor | None:
    """A split's labels, read without loading its inputs; None when it does not expose them."""
    if isinstance(dataset, Subset):
        labels = class_labels(dataset.dataset)
        rows = torch.as_tensor(dataset.indices, dtype=torch.long)
        return None if labels is None else labels[rows]
    targets = getattr(dataset, "targets", None)
    samples = getattr(dataset, "samples", None)
    try:
        if targets is None and isinstance(samples, list):
            targets = [label for _, label in samples]  # torchvision's (path, label) pairs
        if targets is None:
            return None
        # Through numpy: several times faster than torch for a list of a million ints.
        labels = torch.as_tensor(targets if torch.is_tensor(targets) else np.asarray(targets))
    except (TypeError, ValueError, RuntimeError):  # not pairs, strings, ragged sequences
        return None
    return None if labels.dtype == torch.bool else labels.flatten()


def check_labels(splits: Splits) -> None:
    """Raise UserError when a class label of a split is below 0 or not below ``num_classes``.

    Only for ``target_kind == "class"``, and only splits that expose their labels without
    loading their inputs: a ``targets`` tensor or list (TensorSplit, ImageFolderSplit,
    torchvision's data sets) or a ``samples`` list of ``(input, label)`` pairs (torchvision's
    ImageFolder), also inside a Subset. One vectorized pass per split.
    """
    if splits.target_kind != "class":
        return
    last = splits.num_classes - 1
    for split_name in ("train", "val", "test"):
        labels = class_labels(getattr(splits, split_name))
        if labels is None:
            continue
        outside = (labels < 0) | (labels > last)
        if outside.any():
            label = labels[outside.nonzero()[0, 0]].item()
            raise UserError(
                f"data: label {label} in the {split_name} split is outside 0..{last} "
                f"(num_classes={splits.num_classes}); fix the labels or the data set's num_classes"
            )
