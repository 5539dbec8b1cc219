"""Splits, the digits and synthetic data sets, and the loaders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from trainkit.data import (
    LoaderSettings,
    Splits,
    TensorSplit,
    build_loaders,
    digits,
    split_data_node,
    stratified_split,
    synthetic,
)
from trainkit.data.splits import check_labels
from trainkit.errors import UserError


@pytest.fixture(scope="module")
def digits_bunch():
    return load_digits()


@pytest.fixture(scope="module")
def digits_splits() -> Splits:
    return digits()


# --- stratified_split ----------------------------------------------------------------------


def imbalanced_labels(n: int = 1000) -> np.ndarray:
    generator = np.random.default_rng(0)
    labels = generator.choice(5, size=n, p=[0.4, 0.25, 0.15, 0.12, 0.08])
    generator.shuffle(labels)
    return labels


@pytest.mark.parametrize(("val", "test"), [(0.15, 0.15), (0.2, 0.1), (0.1, 0.0), (0.0, 0.25)])
def test_split_sizes_disjoint_and_complete(val, test):
    labels = imbalanced_labels()
    n = len(labels)
    train, val_idx, test_idx = stratified_split(labels, val, test, seed=0)
    assert len(test_idx) == round(n * test)
    assert len(val_idx) == round(n * val)
    assert len(train) == n - round(n * test) - round(n * val)
    everything = np.concatenate([train, val_idx, test_idx])
    assert len(np.unique(everything)) == n  # disjoint
    assert sorted(everything.tolist()) == list(range(n))  # covers everything
    for part in (train, val_idx, test_idx):
        assert np.all(np.diff(part) > 0)  # sorted


@pytest.mark.parametrize("which", ["imbalanced", "digits"])
def test_split_preserves_class_proportions(which, digits_bunch):
    labels = imbalanced_labels() if which == "imbalanced" else digits_bunch.target
    n = len(labels)
    splits = stratified_split(labels, 0.15, 0.15, seed=3)
    counts = np.bincount(labels)
    for part in splits:
        got = np.bincount(labels[part], minlength=len(counts))
        expected = counts * len(part) / n
        assert np.all(np.abs(got - expected) <= 1), (got, expected)


def test_split_same_seed_same_split_different_seed_different_split():
    labels = imbalanced_labels()
    first = stratified_split(labels, 0.15, 0.15, seed=0)
    again = stratified_split(labels, 0.15, 0.15, seed=0)
    other = stratified_split(labels, 0.15, 0.15, seed=1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, c in zip(first, other, strict=True):
        assert len(a) == len(c)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.6, 0.5), (0.0, 1.0)])
def test_split_fractions_summing_to_one_or_more_are_rejected(val, test):
    with pytest.raises(UserError, match="must sum to less than 1"):
        stratified_split(imbalanced_labels(), val, test, seed=0)


# --- digits --------------------------------------------------------------------------------


def test_digits_sizes_shape_and_classes(digits_splits):
    splits = digits_splits
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797
    assert sizes[1] == round(1797 * 0.15) and sizes[2] == round(1797 * 0.15)
    assert splits.input_shape == (1, 8, 8)
    assert splits.image_size == (8, 8)
    assert splits.num_classes == 10
    assert splits.class_names == [str(c) for c in range(10)]
    assert splits.train.inputs.shape == (sizes[0], 1, 8, 8)
    assert splits.train.inputs.dtype == torch.float32
    assert splits.train.targets.dtype == torch.long
    indices = torch.cat([splits.train.indices, splits.val.indices, splits.test.indices])
    assert sorted(indices.tolist()) == list(range(1797))


def test_digits_train_split_is_normalized(digits_splits):
    x = digits_splits.train.inputs
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert x.std().item() == pytest.approx(1.0, abs=1e-4)


def test_digits_val_and_test_use_the_train_statistics(digits_splits, digits_bunch):
    raw = torch.as_tensor(digits_bunch.images / 16.0, dtype=torch.float32)[:, None]
    train_raw = raw[digits_splits.train.indices]
    mean, std = train_raw.mean(), train_raw.std()
    for split in (digits_splits.val, digits_splits.test):
        expected = (raw[split.indices] - mean) / std
        torch.testing.assert_close(split.inputs, expected, atol=1e-5, rtol=1e-5)
        # Not normalized with its own statistics: those would give exactly mean 0.
        own = (raw[split.indices] - raw[split.indices].mean()) / raw[split.indices].std()
        assert not torch.allclose(split.inputs, own, atol=1e-4)
        assert abs(split.inputs.mean().item()) > 1e-4


def test_digits_items_map_back_to_the_original_targets(digits_splits, digits_bunch):
    for split in (digits_splits.train, digits_splits.val, digits_splits.test):
        for i in (0, 1, len(split) // 2, len(split) - 1):
            x, y, index = split[i]
            assert x.shape == (1, 8, 8)
            assert int(y) == digits_bunch.target[int(index)]
        x, y, index = split.__getitems__([0, 3, 5])
        assert x.shape == (3, 1, 8, 8)
        assert y.tolist() == digits_bunch.target[index.numpy()].tolist()
        assert torch.equal(y, split.targets[[0, 3, 5]])


def test_digits_seed_changes_the_split():
    first, other = digits(seed=0), digits(seed=1)
    assert not torch.equal(first.test.indices, other.test.indices)
    assert len(first.test) == len(other.test)


# --- TensorSplit ---------------------------------------------------------------------------


def test_getitems_applies_the_transform_per_sample():
    inputs = torch.arange(5 * 2 * 2, dtype=torch.float32).reshape(5, 1, 2, 2)
    split = TensorSplit(inputs, torch.arange(5), torch.arange(10, 15))
    calls = []

    def transform(image):
        calls.append(image.clone())
        return image * 2 + len(calls)  # each sample gets its own output

    split.transform = transform
    x, y, index = split.__getitems__([4, 0, 2])
    assert len(calls) == 3
    for call, row in zip(calls, [4, 0, 2], strict=True):
        assert call.shape == (1, 2, 2)
        assert torch.equal(call, inputs[row])
    expected = torch.stack([inputs[4] * 2 + 1, inputs[0] * 2 + 2, inputs[2] * 2 + 3])
    assert torch.equal(x, expected)
    assert y.tolist() == [4, 0, 2]
    assert index.tolist() == [14, 10, 12]
    # The single-item path applies it too.
    x1, y1, i1 = split[1]
    assert len(calls) == 4 and torch.equal(x1, inputs[1] * 2 + 4)
    assert (int(y1), int(i1)) == (1, 11)


def test_getitems_without_transform_returns_the_rows():
    inputs = torch.randn(6, 3)
    split = TensorSplit(inputs, torch.arange(6), torch.arange(6))
    x, _, _ = split.__getitems__([5, 1])
    assert torch.equal(x, inputs[[5, 1]])
    assert len(split) == 6


# --- loaders -------------------------------------------------------------------------------


def small_splits(n: int = 50) -> Splits:
    def part(offset):
        return TensorSplit(torch.randn(n, 3), torch.arange(n) % 2, torch.arange(n) + offset)

    return Splits(part(0), part(1000), part(2000), num_classes=2, input_shape=(3,))


def loader_order(loader) -> list[int]:
    return torch.cat([index for _, _, index in loader]).tolist()


def test_train_loader_shuffles_reproducibly():
    splits = small_splits()
    settings = LoaderSettings(batch_size=8, eval_batch_size=16)
    first = build_loaders(splits, settings, seed=0)
    again = build_loaders(splits, settings, seed=0)
    other = build_loaders(splits, settings, seed=1)
    order = loader_order(first["train"])
    assert sorted(order) == list(range(50))
    assert order != list(range(50))  # shuffled
    assert order == loader_order(again["train"])
    assert order != loader_order(other["train"])
    batches = [len(y) for _, y, _ in first["train"]]
    assert batches == [8] * 6 + [2]


def test_eval_loaders_are_ordered():
    splits = small_splits()
    loaders = build_loaders(splits, LoaderSettings(batch_size=8, eval_batch_size=16), seed=0)
    assert loader_order(loaders["val"]) == list(range(1000, 1050))
    assert loader_order(loaders["test"]) == list(range(2000, 2050))
    assert [len(y) for _, y, _ in loaders["val"]] == [16, 16, 16, 2]
    # A second pass is the same.
    assert loader_order(loaders["val"]) == list(range(1000, 1050))


def test_loaders_batch_inputs_targets_indices_consistently():
    splits = small_splits()
    loaders = build_loaders(splits, LoaderSettings(batch_size=7), seed=0)
    for x, y, index in loaders["train"]:
        assert torch.equal(x, splits.train.inputs[index])
        assert torch.equal(y, splits.train.targets[index])


def test_split_data_node_separates_loader_keys():
    node = {"name": "digits", "seed": 3, "batch_size": 32, "pin_memory": True}
    dataset_node, settings = split_data_node(node)
    assert dataset_node == {"name": "digits", "seed": 3}
    assert settings == LoaderSettings(batch_size=32, pin_memory=True)
    with pytest.raises(UserError, match=r"^data\.batch_size=0 is out of range"):
        split_data_node({"name": "digits", "batch_size": 0})


# --- synthetic -----------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "classes"), [([1, 8, 8], 10), ([3, 4, 5], 4), ([12], 3)])
def test_synthetic_shape_and_classes(shape, classes):
    splits = synthetic(num_samples=120, num_classes=classes, shape=shape)
    assert splits.input_shape == tuple(shape)
    assert splits.num_classes == classes
    assert splits.class_names == [str(c) for c in range(classes)]
    assert splits.train.inputs.shape[1:] == tuple(shape)
    assert sum(len(s) for s in (splits.train, splits.val, splits.test)) == 120
    targets = torch.cat([splits.train.targets, splits.val.targets, splits.test.targets])
    assert sorted(targets.unique().tolist()) == list(range(classes))
    assert splits.image_size == (tuple(shape[-2:]) if len(shape) == 3 else None)


def test_synthetic_is_seeded():
    a, b, c = synthetic(seed=0), synthetic(seed=0), synthetic(seed=1)
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert not torch.equal(a.train.inputs, c.train.inputs)


# --- diabetes and digit strings --------------------------------------------------------------


def test_diabetes_is_a_regression_set_split_over_the_whole_target_range():
    from sklearn.datasets import load_diabetes

    from trainkit.data import bundled

    splits = bundled.diabetes()
    target = load_diabetes().target
    assert splits.target_kind == "continuous" and splits.num_classes == 1
    assert splits.input_shape == (10,)
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(target)
    for split in (splits.train, splits.val, splits.test):
        # Stratified by quintile: each split reaches both ends of the range.
        assert (
            split.targets.min()
            < np.quantile(target, 0.2)
            < np.quantile(target, 0.8)
            < (split.targets.max())
        )
        assert torch.equal(
            split.targets, torch.as_tensor(target[split.indices], dtype=torch.float32)
        )
    mean, std = splits.target_scale
    assert mean == pytest.approx(splits.train.targets.mean().item())
    assert std == pytest.approx(splits.train.targets.std().item())


def test_digit_strings_are_digit_images_side_by_side_labelled_with_their_digits():
    from trainkit.data import bundled

    splits = bundled.digit_strings(num_strings=300, min_length=3, max_length=5)
    assert splits.input_shape == (1, 8, 40) and splits.num_classes == 11
    assert splits.target_kind == "sequence" and splits.class_names[0] == "<blank>"
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [210, 45, 45]
    lengths = (splits.train.targets > 0).sum(dim=1)
    assert lengths.min() == 3 and lengths.max() == 5
    for row in range(20):  # labels are digits + 1, padded with 0 after the string
        length = int(lengths[row])
        assert (splits.train.targets[row, :length] >= 1).all()
        assert (splits.train.targets[row, length:] == 0).all()
    # Inked columns: as many 8-pixel digits as the label says, blank elsewhere.
    background = splits.train.inputs.amin()
    inked = (splits.train.inputs[:50, 0] > background + 1e-4).any(dim=1)  # (strings, columns)
    assert (inked.sum(dim=1) <= 8 * lengths[:50]).all()


def test_digit_strings_length_bounds_are_checked():
    from trainkit.data import bundled

    with pytest.raises(UserError, match="data.min_length=6 is above data.max_length=5"):
        bundled.digit_strings(min_length=6, max_length=5)


# --- check_labels --------------------------------------------------------------------------


def labelled_splits(train, val=(0, 1), test=(0, 1), num_classes=10, **fields) -> Splits:
    def part(labels):
        labels = torch.as_tensor(labels)
        return TensorSplit(torch.zeros(len(labels), 2), labels, torch.arange(len(labels)))

    return Splits(part(train), part(val), part(test), num_classes, input_shape=(2,), **fields)


class LabelledFiles(torch.utils.data.Dataset):
    """A data set that lists its labels as Python objects, as file-backed ones do."""

    def __init__(self, targets=None, samples=None):
        if targets is not None:
            self.targets = targets
        if samples is not None:
            self.samples = samples

    def __len__(self):
        return len(getattr(self, "targets", getattr(self, "samples", [])))


def test_labels_inside_0_to_num_classes_pass(digits_splits):
    check_labels(labelled_splits(train=[0, 9, 3], val=[9], test=[0]))
    check_labels(digits_splits)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (dict(train=[0, 12, 3, 10]), "label 12 in the train split is outside 0..9"),
        (dict(train=[0, 1], val=[1, -1]), "label -1 in the val split is outside 0..9"),
        (dict(train=[0, 1], test=[[0, 1], [2, 10]]), "label 10 in the test split is outside 0..9"),
    ],
)
def test_a_label_outside_0_to_num_classes_is_one_line(labels, message):
    with pytest.raises(UserError) as error:
        check_labels(labelled_splits(**labels))
    assert str(error.value) == (
        f"data: {message} (num_classes=10); fix the labels or the data set's num_classes"
    )


@pytest.mark.parametrize(
    "split",
    [
        LabelledFiles(targets=[0, 1, 2, 3]),  # ImageFolderSplit, torchvision's data sets
        LabelledFiles(samples=[("a.png", 0), ("b.png", 3)]),  # torchvision's ImageFolder
    ],
)
def test_labels_listed_as_python_objects_are_checked(split):
    splits = labelled_splits(train=[0])
    splits.val = split
    with pytest.raises(UserError, match=r"^data: label 3 in the val split is outside 0\.\.2 "):
        check_labels(dataclasses.replace(splits, num_classes=3))
    check_labels(dataclasses.replace(splits, num_classes=4))


def test_a_subset_is_checked_on_its_own_rows():
    splits = labelled_splits(train=[0, 1, 7, 2])
    splits.train = torch.utils.data.Subset(splits.train, range(2))
    check_labels(dataclasses.replace(splits, num_classes=3))  # the 7 is not in the subset
    splits.train.indices = [1, 2]
    with pytest.raises(UserError, match="label 7 in the train split"):
        check_labels(dataclasses.replace(splits, num_classes=3))


def test_splits_without_class_labels_are_not_checked():
    check_labels(labelled_splits(train=[0.5, 250.0], target_kind="continuous", num_classes=1))
    check_labels(labelled_splits(train=[[1, 12, 0]], target_kind="sequence", num_classes=11))
    splits = labelled_splits(train=[0])
    splits.train = LabelledFiles()  # no targets, no samples
    splits.val = LabelledFiles(targets=["cat", "dog"])  # not class indices
    splits.test = LabelledFiles(samples=[("a.png",)])  # not pairs
    check_labels(splits)


def test_k_fold_val_splits_are_disjoint_stratified_and_cover_all_but_test():
    from trainkit.data.splits import k_fold

    labels = np.arange(300) % 3
    plain = stratified_split(labels, 0.15, 0.2, seed=4)
    vals = []
    for fold in range(5):
        with k_fold(5, fold) as folding:
            train, val, test = stratified_split(labels, 0.15, 0.2, seed=4)
        assert folding[2]  # the builder carved val: the folds applied
        assert np.array_equal(test, plain[2])  # the test split stays fixed
        assert not set(train) & set(val) and len(train) + len(val) == 240
        assert sorted(np.bincount(labels[val])) == [16, 16, 16]  # 48 = 240 / 5, by class
        vals.append(val)
    assert sorted(np.concatenate(vals)) == sorted(np.concatenate(plain[:2]))


def test_a_fold_of_the_digits_through_the_config():
    from trainkit import config
    from trainkit.build import build_data

    cfg = config.resolve(config.compose(config.prepare(["data.folds=4", "data.fold=3"])))
    splits, _ = build_data(cfg, seed=0)
    assert len(splits.test) == 270 and len(splits.val) in (381, 382)  # 1,527 / 4


def test_an_eval_split_smaller_than_the_processes_is_refused():
    """Each process evaluates a share of the val and test splits: an empty share would
    leave a process out of the gathering of metrics (gloo aborts the run)."""
    from trainkit import config
    from trainkit.build import build_data

    overrides = ["data=synthetic", "data.num_samples=40", "data.num_classes=2",
                 "data.val_fraction=0.05", "data.test_fraction=0.05"]  # fmt: skip
    cfg = config.resolve(config.compose(config.prepare(overrides)))
    assert len(build_data(cfg, seed=0, world_size=2)[0].val) == 2
    with pytest.raises(UserError, match="the val split has 2 samples, fewer than the 3 processes"):
        build_data(cfg, seed=0, world_size=3)
