"""Train-time augmentation pipelines (torchvision.transforms.v2), applied per sample.

Evaluation never sees these: the val and test splits only get the data set's
deterministic preprocessing (normalization), done once when the data is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from trainkit.registry import AUGMENTATIONS, NonNegativeFloat, NonNegativeInt

Transform = Callable[[torch.Tensor], torch.Tensor]


@AUGMENTATIONS.register("none")
def none() -> Transform | None:
    return None


@AUGMENTATIONS.register("digits")
def digits(
    image_size: tuple[int, int] | None,
    shift: NonNegativeInt = 1,
    rotation: NonNegativeFloat = 10.0,
) -> Transform:
    """Small shifts and rotations. No flips: a mirrored 6 is a 9 and a mirrored 2 is no digit."""
    steps: list[Callable] = []
    if shift:
        steps.append(v2.RandomCrop(image_size, padding=shift))
    if rotation:
        steps.append(v2.RandomRotation(rotation))
    return v2.Compose(steps)
