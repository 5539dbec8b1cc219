"""The two loaders of trainkit/data/loaders.py: a DataLoader and the on-device loader give the
same batches in the same order, and the loader keys of the data node are checked."""

from __future__ import annotations

import json
import logging
import multiprocessing

import pytest
import torch
from torch.utils.data import Subset

from tests import fake_images
from tests.fake_images import make_imagefolder
from tests.fake_text import make_text_csv
from trainkit import config
from trainkit.data import (
    LoaderSettings,
    Splits,
    TensorSplit,
    build_loaders,
    split_data_node,
    stop_workers,
)
from trainkit.data.loaders import DeviceLoader, EpochSampler
from trainkit.errors import UserError
from trainkit.registry import DATASETS, load_components
from trainkit.runner import Runner

load_components()


def image_splits(n: int = 50) -> Splits:
    def part(offset):
        inputs = torch.randn(n, 1, 4, 4)
        return TensorSplit(inputs, torch.arange(n) % 3, torch.arange(n) + offset)

    return Splits(part(0), part(1000), part(2000), num_classes=3, input_shape=(1, 4, 4))


def both(splits: Splits, **settings) -> tuple[dict, dict]:
    """The loaders of each kind for the same splits and settings."""
    common = {"batch_size": 8, "eval_batch_size": 16, **settings}
    loaders = build_loaders(splits, LoaderSettings(**common), seed=3)
    on_device = build_loaders(splits, LoaderSettings(**common, on_device=True), seed=3)
    return loaders, on_device


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b) and a.batch_size == b.batch_size
    batches = list(zip(a, b, strict=True))
    assert len(batches) == len(a)
    for first, second in batches:
        for x, y in zip(first, second, strict=True):
            assert x.dtype == y.dtype and torch.equal(x, y)


def order(loader) -> list[int]:
    return torch.cat([indices for _, _, indices in loader]).tolist()


def test_the_device_loader_gives_the_batches_of_the_dataloader():
    loaders, on_device = both(image_splits())
    assert isinstance(on_device["train"], DeviceLoader)
    for epoch in (0, 1):
        loaders["train"].sampler.set_epoch(epoch)
        on_device["train"].sampler.set_epoch(epoch)
        assert_same_batches(loaders["train"], on_device["train"])
    for split_name in ("val", "test"):
        assert_same_batches(loaders[split_name], on_device[split_name])
    assert [len(y) for _, y, _ in on_device["train"]] == [8] * 6 + [2]
    assert order(on_device["val"]) == list(range(1000, 1050))


def test_two_ranks_on_the_device_share_the_epoch_permutation():
    splits = image_splits(n=50)  # even: DistributedSampler adds no repeats
    single = build_loaders(splits, LoaderSettings(batch_size=8, on_device=True), seed=5)["train"]
    ranks = [
        build_loaders(
            splits, LoaderSettings(batch_size=4, on_device=True), seed=5, world_size=2, rank=rank
        )
        for rank in range(2)
    ]
    for epoch in (0, 1):
        for loader in (single, *(r["train"] for r in ranks)):
            loader.sampler.set_epoch(epoch)
        for rank, loaders in enumerate(ranks):
            sampler = EpochSampler(splits.train, 2, rank, shuffle=True, seed=5)
            sampler.set_epoch(epoch)
            assert order(loaders["train"]) == list(sampler)  # indices equal rows here
        shards = [order(r["train"]) for r in ranks]
        assert set(shards[0] + shards[1]) == set(range(50))
        for batch, *parts in zip(single, *(r["train"] for r in ranks), strict=True):
            together = torch.cat([part[2] for part in parts]).tolist()
            assert set(batch[2].tolist()) == set(together)  # one global batch
    # Evaluation: each sample once, across the ranks.
    val = order(ranks[0]["val"]) + order(ranks[1]["val"])
    assert sorted(val) == list(range(1000, 1050))


def test_skip_resumes_an_epoch_after_its_first_batches():
    _, on_device = both(image_splits())
    loader = on_device["train"]
    loader.sampler.set_epoch(2)
    whole = list(loader)
    loader.sampler.skip = 3 * loader.batch_size
    rest = list(loader)
    assert len(rest) == len(whole) - 3
    for first, second in zip(whole[3:], rest, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def imbalanced_splits(n: int = 120) -> Splits:
    """Class 0: 100 samples, class 1: 15, class 2: 5."""
    labels = torch.tensor([0] * 100 + [1] * 15 + [2] * 5)[:n]
    split = TensorSplit(torch.randn(n, 1, 4, 4), labels, torch.arange(n))
    return Splits(split, split, split, num_classes=3, input_shape=(1, 4, 4))


def test_the_balanced_sampler_draws_each_class_equally_often():
    splits = imbalanced_splits()
    loader = build_loaders(splits, LoaderSettings(batch_size=10, sampler="balanced"), seed=1)
    drawn = []
    for epoch in range(20):
        loader["train"].sampler.set_epoch(epoch)
        epoch_labels = torch.cat([targets for _, targets, _ in loader["train"]])
        assert len(epoch_labels) == 120  # an epoch as long as the split
        drawn.append(epoch_labels)
    shares = torch.bincount(torch.cat(drawn), minlength=3) / (20 * 120)
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.03)  # 100:15:5 in the data
    loader["train"].sampler.set_epoch(0)
    again = torch.cat([targets for _, targets, _ in loader["train"]])
    assert torch.equal(again, drawn[0])  # an epoch's draw depends on the seed and epoch only


def test_the_balanced_sampler_shards_a_global_order_and_resumes_mid_epoch():
    splits = imbalanced_splits()
    settings = LoaderSettings(batch_size=6, sampler="balanced")
    single = build_loaders(splits, LoaderSettings(batch_size=12, sampler="balanced"), seed=2)
    ranks = [build_loaders(splits, settings, seed=2, world_size=2, rank=r) for r in range(2)]
    for loader in (single, *ranks):
        loader["train"].sampler.set_epoch(3)
    for batch, *parts in zip(single["train"], *(r["train"] for r in ranks), strict=True):
        together = torch.cat([part[2] for part in parts]).tolist()
        assert sorted(batch[2].tolist()) == sorted(together)  # one global batch
    sampler = ranks[1]["train"].sampler
    whole = list(sampler)
    sampler.skip = 2 * 6
    assert list(sampler) == whole[12:] and len(sampler) == len(whole) - 12


def test_a_balanced_sampler_needs_class_labels():
    splits = image_splits()
    regression = Splits(
        splits.train, splits.val, splits.test, num_classes=1, input_shape=(1, 4, 4),
        target_kind="regression",
    )  # fmt: skip
    with pytest.raises(UserError, match="data.sampler=balanced .* no class labels"):
        build_loaders(regression, LoaderSettings(batch_size=8, sampler="balanced"), seed=0)


def test_a_subset_of_a_split_is_batched_with_its_augmentation():
    splits = image_splits()
    splits.train.transform = torch.nn.Identity()  # no step of crops and flips: refused
    few = Subset(splits.train, range(10, 30))
    with pytest.raises(UserError, match="this augmentation has Identity"):
        both(Splits(few, few, few, num_classes=3, input_shape=(1, 4, 4)))
    splits.train.transform = None
    loaders, on_device = both(Splits(few, few, few, num_classes=3, input_shape=(1, 4, 4)))
    assert_same_batches(loaders["train"], on_device["train"])
    assert sorted(order(on_device["train"])) == list(range(10, 30))


def test_a_data_set_read_from_files_cannot_be_held_on_the_device(tmp_path):
    make_imagefolder(tmp_path, per_class=10)
    splits = DATASETS.build(
        {"name": "imagefolder", "root": str(tmp_path), "image_size": 16, "resize": 16}, "data"
    )
    with pytest.raises(UserError) as error:
        build_loaders(splits, LoaderSettings(on_device=True), seed=0)
    assert str(error.value) == (
        "data.on_device=true needs a data set held in memory as tensors (TensorSplits); "
        "this one's splits are ImageFolderSplits: use data.on_device=false"
    )


def small_data_set(name: str, root) -> dict:
    """Parameters that build data set ``name`` small, from fake files where it reads files."""
    makers = {
        "cifar10": fake_images.make_cifar10,
        "cifar100": fake_images.make_cifar100,
        "mnist": fake_images.make_mnist,
        "fashion_mnist": fake_images.make_fashion_mnist,
    }
    if name in makers:
        makers[name](root)
        return {"root": str(root), "download": False}
    if name == "text_csv":
        return {"path": str(make_text_csv(root / "texts.csv", n=90)), "max_len": 8}
    return {"digit_strings": {"num_strings": 200}, "synthetic": {"num_samples": 200}}.get(name, {})


@pytest.mark.parametrize("name", sorted(set(DATASETS.names()) - {"imagefolder"}))
def test_every_in_memory_data_set_is_batched_alike_on_the_device(name, tmp_path):
    splits = DATASETS.build({"name": name, **small_data_set(name, tmp_path)}, "data")
    loaders, on_device = both(splits)
    for split_name in ("train", "val", "test"):
        assert_same_batches(loaders[split_name], on_device[split_name])


# --- the loader keys ---------------------------------------------------------------------


def test_pin_memory_auto_pins_for_cuda_only():
    splits = image_splits()
    for device, pinned in (("cpu", False), ("cuda", True)):
        loaders = build_loaders(splits, LoaderSettings(pin_memory="auto"), seed=0, device=device)
        assert loaders["train"].pin_memory is pinned
    loaders = build_loaders(splits, LoaderSettings(pin_memory=True), seed=0)
    assert loaders["train"].pin_memory is True


def test_prefetch_factor_reaches_the_workers():
    settings = LoaderSettings(num_workers=2, prefetch_factor=4)
    loader = build_loaders(image_splits(), settings, seed=0)["train"]
    assert loader.prefetch_factor == 4 and loader.persistent_workers


def test_stop_workers_ends_the_persistent_workers_and_a_later_epoch_starts_new_ones():
    loaders = build_loaders(image_splits(), LoaderSettings(num_workers=2), seed=0)
    before = set(multiprocessing.active_children())
    first = order(loaders["train"])
    started = set(multiprocessing.active_children()) - before
    assert len(started) == 2  # persistent: alive between epochs
    stop_workers(loaders)
    assert not any(worker.is_alive() for worker in started)
    assert order(loaders["train"]) == first  # (the same epoch again, from new workers)
    stop_workers(loaders)
    assert set(multiprocessing.active_children()) <= before


def test_workers_are_capped_at_the_cpus_the_process_may_use(monkeypatch, caplog):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.INFO, logger="trainkit"):
        loader = build_loaders(image_splits(), LoaderSettings(num_workers=5), seed=0)["train"]
    assert loader.num_workers == 2
    assert "data.num_workers=5 is more than the 2 CPUs" in caplog.text
    loader = build_loaders(image_splits(), LoaderSettings(num_workers=2), seed=0)["train"]
    assert loader.num_workers == 2


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            {"prefetch_factor": 4},
            "data.prefetch_factor=4 counts the batches each worker loads ahead, and "
            "data.num_workers=0 starts none: set data.num_workers or data.prefetch_factor=null",
        ),
        ({"prefetch_factor": 0, "num_workers": 2}, "data.prefetch_factor=0 is out of range"),
        ({"pin_memory": "yes"}, "data.pin_memory='yes' has the wrong type: it must be true or"),
        ({"on_device": "cuda"}, "data.on_device='cuda' has the wrong type: it must be true or"),
    ],
)
def test_loader_keys_are_checked(node, message):
    with pytest.raises(UserError, match=f"^{message}"):
        split_data_node({"name": "digits", **node})


# --- a run ---------------------------------------------------------------------------------

RUN = [
    "data=digits",
    "model.depth=8",
    "augmentation=none",
    "debug=limit",
    "trainer.device=cpu",
    "logger.tensorboard=false",
    "logger.progress_bar=false",
]


def epochs_logged(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("epoch_time_s")
    return records


def test_a_run_on_the_device_trains_bit_for_bit_as_with_a_dataloader(tmp_path):
    summaries = {}
    for on_device in ("false", "true"):
        cfg = config.compose(config.prepare([*RUN, f"data.on_device={on_device}"]))
        config.validate(cfg)
        runner = Runner(cfg, tmp_path / on_device)
        summaries[on_device] = runner.fit()
    assert isinstance(runner.loaders["train"], DeviceLoader)
    assert epochs_logged(tmp_path / "true") == epochs_logged(tmp_path / "false")
    for key in ("test/loss", "test/acc", "best_epoch"):
        assert summaries["true"][key] == summaries["false"][key], key


@pytest.mark.gpu
@pytest.mark.parametrize("augmentation", ["none", "basic"])
def test_on_a_gpu_the_data_stays_there_and_trains_as_with_a_dataloader(tmp_path, augmentation):
    records = {}
    for on_device in ("false", "true"):
        overrides = [o for o in RUN if o != "trainer.device=cpu" and o != "augmentation=none"]
        cfg = config.compose(
            config.prepare(
                [
                    *overrides,
                    "trainer.device=cuda",
                    "trainer.deterministic=true",
                    f"augmentation={augmentation}",
                    f"data.on_device={on_device}",
                ]
            )
        )
        runner = Runner(cfg, tmp_path / on_device)
        runner.fit()
        records[on_device] = epochs_logged(tmp_path / on_device)
    inputs, targets, _ = next(iter(runner.loaders["train"]))
    assert inputs.is_cuda and targets.is_cuda  # cut on the GPU: nothing to copy per step
    if augmentation == "none":  # the same batches: the same numbers
        for with_loader, on_gpu in zip(records["false"], records["true"], strict=True):
            assert on_gpu["train/loss"] == pytest.approx(with_loader["train/loss"], rel=1e-5)
    else:  # other crops and flips (drawn on the GPU), and it learns (CPU: 0.16 to 0.44)
        first, last = records["true"][0], records["true"][-1]
        assert last["train/loss"] < first["train/loss"] and last["val/acc"] > 0.2


class Crash(Exception):
    pass


def test_a_run_stopped_with_a_dataloader_resumes_on_the_device_bitwise(tmp_path, monkeypatch):
    """Without augmentation the two loaders train alike, so data.on_device may change when a
    run resumes (it is in SAFE_TO_CHANGE_ON_RESUME), also within an epoch."""
    run = [*RUN, "trainer.checkpoint_every=4"]

    def make_runner(run_dir, *overrides):
        return Runner(config.compose(config.prepare([*run, *overrides])), run_dir)

    make_runner(tmp_path / "straight").fit()
    real_step = Runner._optimizer_step

    def step_then_crash(self, *args):
        stepped = real_step(self, *args)
        if self.step == 15:  # within epoch 2 (10 steps an epoch), after the checkpoint at 12
            raise Crash
        return stepped

    monkeypatch.setattr(Runner, "_optimizer_step", step_then_crash)
    with pytest.raises(Crash):
        make_runner(tmp_path / "crashed").fit()
    monkeypatch.undo()
    resumed = make_runner(tmp_path / "crashed", "data.on_device=true", f"resume={tmp_path}/crashed")
    assert resumed.step == 12 and isinstance(resumed.loaders["train"], DeviceLoader)
    resumed.fit()
    assert epochs_logged(tmp_path / "crashed") == epochs_logged(tmp_path / "straight")


def test_workers_with_on_device_are_a_note_not_silence(caplog):
    settings = LoaderSettings(num_workers=2, on_device=True)
    with caplog.at_level(logging.INFO, logger="trainkit"):
        loaders = build_loaders(image_splits(), settings, seed=0)
    assert isinstance(loaders["train"], DeviceLoader)
    assert "data.num_workers unused" in caplog.text
