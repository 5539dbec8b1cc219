"""Loss builders (torch.nn losses, configured from the ``loss`` node)."""

from __future__ import annotations

import torch
from torch import nn

from trainkit.errors import UserError
from trainkit.registry import LOSSES, NonNegativeFloat, Probability


@LOSSES.register("cross_entropy")
def cross_entropy(
    num_classes: int,
    label_smoothing: Probability = 0.0,
    weight: list[NonNegativeFloat] | None = None,
) -> nn.Module:
    """Softmax cross-entropy on logits and class indices; optional per-class weights."""
    if weight is not None and len(weight) != num_classes:
        raise UserError(
            f"loss.weight has {len(weight)} entries but the data has {num_classes} classes"
        )
    weight_tensor = None if weight is None else torch.tensor(list(weight), dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight_tensor, label_smoothing=label_smoothing)
