"""The DataLoaders that feed the runner, and the data node's loader settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

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
        batched = _fetches_batches(dataset)
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
