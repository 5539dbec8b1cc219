"""The loaders that feed the runner.

Two ways to batch a split, chosen by ``data.on_device``: a DataLoader (workers, pinned
memory), or ``DeviceLoader``, which holds an in-memory split on the run's device and cuts
batches there. Both follow the same samplers, so they give the same batches.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from trainkit.augment import device_augmentation
from trainkit.data.splits import Splits, TensorSplit, class_labels
from trainkit.errors import UserError
from trainkit.reporting import log
from trainkit.settings import LoaderSettings


def _keep_batch(batch):
    return batch


def _fetches_batches(dataset) -> bool:
    """Whether the data set returns whole batches from ``__getitems__`` (a Subset passes
    the call on to the data set it takes samples from)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return hasattr(dataset, "__getitems__")


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th sample from ``rank`` on, in order: the processes' shards cover
    an evaluation split exactly once (DistributedSampler would pad it with repeats)."""

    def __init__(self, length: int, world_size: int, rank: int):
        self.indices = range(rank, length, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochSampler(DistributedSampler):
    """DistributedSampler that can start an epoch after its first ``skip`` samples: a run
    resumed within an epoch sees the rest of that epoch's order, and nothing is fetched
    (or augmented, which would draw random numbers) for the batches already done."""

    skip = 0

    def order(self) -> Iterator[int]:
        """This process's samples of the epoch, from its first."""
        return super().__iter__()

    def __iter__(self):
        return itertools.islice(self.order(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


class BalancedSampler(EpochSampler):
    """Samples drawn with replacement, each with the weight 1 / (its class's count): every
    class comes up equally often, an epoch as long as the split. The draw of an epoch depends
    on the seed and the epoch only, so every process draws the same global order and takes
    every ``num_replicas``-th sample of it (shards exactly as the shuffled order does), and a
    resumed run draws it again."""

    def __init__(
        self, dataset: Dataset, labels: torch.Tensor, world_size: int, rank: int, seed: int
    ):
        super().__init__(dataset, world_size, rank, shuffle=True, seed=seed)
        counts = torch.bincount(labels).double()
        self.weights = (1.0 / counts)[labels]

    def order(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(
            self.weights, self.total_size, replacement=True, generator=generator
        )
        return iter(drawn[self.rank : self.total_size : self.num_replicas].tolist())


def train_sampler(
    splits: Splits, settings: LoaderSettings, world_size: int, rank: int, seed: int
) -> EpochSampler:
    """The train split's sampler: shuffled, or with ``data.sampler=balanced`` balanced over
    its classes (UserError for a split without class labels)."""
    dataset = splits.train
    if settings.sampler == "shuffle":
        return EpochSampler(dataset, world_size, rank, shuffle=True, seed=seed)
    labels = class_labels(dataset) if splits.target_kind == "class" else None
    if labels is None or labels.is_floating_point() or len(labels) == 0:
        raise UserError(
            "data.sampler=balanced draws each class equally often, and this data's train "
            "split has no class labels to read; use data.sampler=shuffle"
        )
    return BalancedSampler(dataset, labels.long(), world_size, rank, seed)


def _in_memory(dataset: Dataset) -> TensorSplit:
    """The TensorSplit behind ``dataset``; for a Subset, a TensorSplit of its rows."""
    if isinstance(dataset, Subset):
        whole = _in_memory(dataset.dataset)
        rows = torch.as_tensor(dataset.indices, dtype=torch.long)
        part = TensorSplit(whole.inputs[rows], whole.targets[rows], whole.indices[rows])
        part.transform = whole.transform
        return part
    if not isinstance(dataset, TensorSplit):
        raise UserError(
            "data.on_device=true needs a data set held in memory as tensors (TensorSplits); "
            f"this one's splits are {type(dataset).__name__}s: use data.on_device=false"
        )
    return dataset


class DeviceLoader:
    """Batches of an in-memory split, cut on the device that holds it.

    Yields what a DataLoader over the split yields, ``(inputs, targets, indices)`` in the
    order of the same ``sampler`` (``set_epoch`` and ``skip`` included), with the same
    ``len()`` and ``batch_size``; but the split is copied to ``device`` once, and each batch
    is one indexing operation there: no workers, no collation, no copy per step. ``indices``
    stay on the host, as a DataLoader's do. ``augment`` transforms a whole batch.
    """

    def __init__(
        self,
        split: TensorSplit,
        sampler: Sampler[int],
        batch_size: int,
        device: torch.device,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ):
        try:
            self.inputs, self.targets = split.inputs.to(device), split.targets.to(device)
        except torch.OutOfMemoryError:
            gigabytes = (split.inputs.nbytes + split.targets.nbytes) / 1e9
            raise UserError(
                f"data.on_device=true: the {gigabytes:.1f} GB of a split do not fit in the "
                f"memory of {device}; use data.on_device=false"
            ) from None
        self.indices, self.sampler, self.batch_size = split.indices, sampler, batch_size
        self.augment = augment
        # Unused here; kept so that a checkpoint holds the train loader's generator either way.
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        order_on_device = order.to(self.inputs.device)  # one copy per epoch, not per step
        for start in range(0, len(order), self.batch_size):
            rows = order_on_device[start : start + self.batch_size]
            inputs = self.inputs[rows]
            if self.augment is not None:
                inputs = self.augment(inputs)
            yield inputs, self.targets[rows], self.indices[order[start : start + self.batch_size]]


def _workers(asked: int) -> int:
    """``asked`` worker processes, or as many as this process may run on when that is fewer:
    more only queue for the same cores (torch warns once per loader)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if available and asked > available:
        log.info(
            f"note: data.num_workers={asked} is more than the {available} CPUs this process "
            f"may use; {available} workers load the data"
        )
        return available
    return asked


def stop_workers(loaders: dict[str, DataLoader | DeviceLoader]) -> None:
    """Stop the loaders' worker processes now: a verb calls this when it is done with them.

    A DataLoader keeps persistent workers until the process exits, and there, with pinned
    memory, torch 2.11 waited 5 seconds for each (pytorch/pytorch#81794): a GPU run with 4
    workers sat a minute after its last line (found on an H200). A sweep whose jobs train
    in one process also kept every job's."""
    for loader in loaders.values():
        iterator = getattr(loader, "_iterator", None)  # where torch keeps persistent workers
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            loader._iterator = None
            iterator._shutdown_workers()


def build_loaders(
    splits: Splits,
    settings: LoaderSettings,
    seed: int,
    world_size: int = 1,
    rank: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, DataLoader | DeviceLoader]:
    """One loader per split: a DataLoader, or with ``settings.on_device`` a DeviceLoader
    on ``device``. The train loader shuffles with a seeded permutation per epoch that every
    process shares, each taking every ``world_size``-th sample of it: the samples of one
    global batch are the same for any number of processes. Evaluation loaders take each
    sample once across processes.

    Raises UserError when ``on_device`` is asked of a data set that is not in memory as
    tensors, or of an augmentation that is not crops and flips."""
    device = torch.device(device)
    pin_memory = device.type == "cuda" if settings.pin_memory == "auto" else settings.pin_memory
    if settings.on_device and settings.num_workers:
        log.info("note: data.on_device=true cuts batches on the device; data.num_workers unused")
    workers = _workers(settings.num_workers)
    loaders = {}
    for split_name in ("train", "val", "test"):
        dataset = getattr(splits, split_name)
        training = split_name == "train"
        if training:
            sampler = train_sampler(splits, settings, world_size, rank, seed)
        else:
            sampler = ShardSampler(len(dataset), world_size, rank)
        generator = torch.Generator().manual_seed(seed)
        batch_size = settings.batch_size if training else settings.eval_batch_size
        if settings.on_device:
            split = _in_memory(dataset)
            augment = device_augmentation(split.transform)  # refused before any copy
            loaders[split_name] = DeviceLoader(
                split, sampler, batch_size, device, augment, generator
            )
            continue
        batched = _fetches_batches(dataset)
        loaders[split_name] = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=generator,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=settings.prefetch_factor,
            collate_fn=_keep_batch if batched else None,
        )
    return loaders
