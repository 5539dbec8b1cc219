"""The DataLoaders that feed the runner, and the data node's loader settings."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from trainkit.data.splits import Splits
from trainkit.registry import NonNegativeInt, PositiveInt, check_params


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

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def build_loaders(
    splits: Splits, settings: LoaderSettings, seed: int, world_size: int = 1, rank: int = 0
) -> dict[str, DataLoader]:
    """One DataLoader per split. The train loader shuffles with a seeded permutation per
    epoch that every process shares, each taking every ``world_size``-th sample of it: the
    samples of one global batch are the same for any number of processes. Evaluation
    loaders take each sample once across processes."""
    loaders = {}
    for split_name in ("train", "val", "test"):
        dataset = getattr(splits, split_name)
        training = split_name == "train"
        if training:
            sampler = EpochSampler(dataset, world_size, rank, shuffle=True, seed=seed)
        else:
            sampler = ShardSampler(len(dataset), world_size, rank)
        generator = torch.Generator().manual_seed(seed)
        batched = _fetches_batches(dataset)
        loaders[split_name] = DataLoader(
            dataset,
            batch_size=settings.batch_size if training else settings.eval_batch_size,
            sampler=sampler,
            generator=generator,
            num_workers=settings.num_workers,
            pin_memory=settings.pin_memory,
            persistent_workers=settings.num_workers > 0,
            collate_fn=_keep_batch if batched else None,
        )
    return loaders
