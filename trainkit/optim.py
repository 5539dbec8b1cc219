"""Optimizer builders: torch.optim, with weight decay kept off biases and norm weights."""

from __future__ import annotations

import torch
from torch import nn

from trainkit.registry import OPTIMIZERS, NonNegativeFloat, PositiveFloat, Probability


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights that decay, and biases and normalization weights (1-d) that don't.

    Decaying a bias or a BatchNorm scale only shrinks it towards zero without regularizing
    anything useful, so common practice (and torchvision's recipes) exempts them.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


@OPTIMIZERS.register("sgd")
def sgd(
    model: nn.Module,
    lr: PositiveFloat = 0.1,
    momentum: Probability = 0.9,
    dampening: Probability = 0.0,
    nesterov: bool = False,
    weight_decay: NonNegativeFloat = 0.0,
) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        parameter_groups(model, weight_decay),
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
    )


@OPTIMIZERS.register("adam")
def adam(
    model: nn.Module,
    lr: PositiveFloat = 1e-3,
    betas: tuple[Probability, Probability] = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
    amsgrad: bool = False,
) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        parameter_groups(model, weight_decay),
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        amsgrad=amsgrad,
    )
