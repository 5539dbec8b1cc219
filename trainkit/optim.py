"""Optimizer builders: torch.optim, with weight decay kept off biases and norm weights.

Every builder takes the model at run time and the same two grouping options:
``decay_norm_and_bias`` (decay 1-d parameters too) and ``lr_multipliers`` (a factor on the
learning rate for the parameters whose names match a glob pattern); see ``parameter_groups``.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

import torch
from torch import nn

from trainkit.errors import UserError
from trainkit.registry import (
    OPTIMIZERS,
    NonNegativeFloat,
    PositiveFloat,
    Probability,
    check_value,
)

Betas = tuple[Probability, Probability]


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    lr: float | None = None,
    decay_norm_and_bias: bool = False,
    lr_multipliers: Mapping[str, float] | None = None,
) -> list[dict]:
    """Parameter groups for a torch.optim optimizer; every trainable parameter is in one.

    Biases and normalization weights (1-d) get no weight decay unless ``decay_norm_and_bias``:
    decaying a bias or a BatchNorm scale only shrinks it towards zero without regularizing
    anything useful, so common practice (and torchvision's recipes) exempts them.

    ``lr_multipliers`` maps a glob pattern on ``model.named_parameters()`` names (``"stem.*"``)
    to a factor > 0: matching parameters get their own groups with lr ``lr * factor`` (the
    first matching pattern wins), again split into decayed and not. The first group always
    holds the base lr's decayed weights (possibly none), so ``param_groups[0]["lr"]`` is the
    base lr. Raises UserError for a factor that is not > 0 or a pattern that matches nothing.
    """
    patterns = dict(lr_multipliers or {})
    named = list(model.named_parameters())
    for pattern, factor in patterns.items():
        if not isinstance(pattern, str):
            raise UserError(f"optimizer.lr_multipliers: pattern {pattern!r} must be a string")
        check_value(f"optimizer.lr_multipliers[{pattern!r}]", factor, PositiveFloat)
        if not any(fnmatchcase(name, pattern) for name, _ in named):
            examples = ", ".join(name for name, _ in named[:4])
            raise UserError(
                f"optimizer.lr_multipliers: pattern '{pattern}' matches no parameter; "
                f"parameter names look like: {examples} ..."
            )
    if patterns and lr is None:
        raise ValueError("parameter_groups needs the base lr to apply lr_multipliers")

    # One (decay, no_decay) pair per pattern; None is the base lr.
    buckets: dict[str | None, tuple[list, list]] = {None: ([], [])}
    buckets.update({pattern: ([], []) for pattern in patterns})
    for name, parameter in named:
        if not parameter.requires_grad:
            continue
        pattern = next((p for p in patterns if fnmatchcase(name, p)), None)
        decay, no_decay = buckets[pattern]
        decays = decay_norm_and_bias or parameter.ndim > 1
        (decay if decays else no_decay).append(parameter)

    groups = []
    for pattern, (decay, no_decay) in buckets.items():
        extra = {} if pattern is None else {"lr": lr * patterns[pattern]}
        if decay or pattern is None:
            groups.append({"params": decay, "weight_decay": weight_decay, **extra})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


@OPTIMIZERS.register("sgd")
def sgd(
    model: nn.Module,
    lr: PositiveFloat = 0.1,
    momentum: Probability = 0.9,
    dampening: Probability = 0.0,
    nesterov: bool = False,
    weight_decay: NonNegativeFloat = 0.0,
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Stochastic gradient descent with (heavy-ball or Nesterov) momentum.

    Raises UserError for Nesterov without momentum or with dampening (torch would raise a
    ValueError with a traceback).
    """
    if nesterov and (momentum <= 0 or dampening != 0):
        raise UserError(
            f"optimizer.nesterov=true needs momentum > 0 and dampening 0 "
            f"(got momentum={momentum}, dampening={dampening})"
        )
    return torch.optim.SGD(
        parameter_groups(
            model,
            weight_decay,
            lr=lr,
            decay_norm_and_bias=decay_norm_and_bias,
            lr_multipliers=lr_multipliers,
        ),
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
    )


@OPTIMIZERS.register("adam")
def adam(
    model: nn.Module,
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
    amsgrad: bool = False,
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015): per-parameter step sizes from running gradient moments."""
    return torch.optim.Adam(
        parameter_groups(
            model,
            weight_decay,
            lr=lr,
            decay_norm_and_bias=decay_norm_and_bias,
            lr_multipliers=lr_multipliers,
        ),
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        amsgrad=amsgrad,
    )


@OPTIMIZERS.register("adamw")
def adamw(
    model: nn.Module,
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.01,
    amsgrad: bool = False,
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019)."""
    return torch.optim.AdamW(
        parameter_groups(
            model,
            weight_decay,
            lr=lr,
            decay_norm_and_bias=decay_norm_and_bias,
            lr_multipliers=lr_multipliers,
        ),
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        amsgrad=amsgrad,
    )


@OPTIMIZERS.register("adamax")
def adamax(
    model: nn.Module,
    lr: PositiveFloat = 2e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Adam with the infinity norm in place of the second moment."""
    return torch.optim.Adamax(
        parameter_groups(
            model,
            weight_decay,
            lr=lr,
            decay_norm_and_bias=decay_norm_and_bias,
            lr_multipliers=lr_multipliers,
        ),
        lr=lr,
        betas=tuple(betas),
        eps=eps,
    )


@OPTIMIZERS.register("nadam")
def nadam(
    model: nn.Module,
    lr: PositiveFloat = 2e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
    momentum_decay: NonNegativeFloat = 4e-3,
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Adam with Nesterov momentum (Dozat 2016)."""
    return torch.optim.NAdam(
        parameter_groups(
            model,
            weight_decay,
            lr=lr,
            decay_norm_and_bias=decay_norm_and_bias,
            lr_multipliers=lr_multipliers,
        ),
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        momentum_decay=momentum_decay,
    )


@OPTIMIZERS.register("radam")
def radam(
    model: nn.Module,
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Adam with the variance of the adaptive lr rectified early on (Liu et al. 2020)."""
    return torch.optim.RAdam(
        parameter_groups(
            model,
            weight_decay,
            lr=lr,
            decay_norm_and_bias=decay_norm_and_bias,
            lr_multipliers=lr_multipliers,
        ),
        lr=lr,
        betas=tuple(betas),
        eps=eps,
    )


@OPTIMIZERS.register("adagrad")
def adagrad(
    model: nn.Module,
    lr: PositiveFloat = 0.01,
    lr_decay: NonNegativeFloat = 0.0,
    initial_accumulator_value: NonNegativeFloat = 0.0,
    eps: PositiveFloat = 1e-10,
    weight_decay: NonNegativeFloat = 0.0,
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Per-parameter step sizes from the sum of all past squared gradients."""
    return torch.optim.Adagrad(
        parameter_groups(
            model,
            weight_decay,
            lr=lr,
            decay_norm_and_bias=decay_norm_and_bias,
            lr_multipliers=lr_multipliers,
        ),
        lr=lr,
        lr_decay=lr_decay,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
    )


@OPTIMIZERS.register("adadelta")
def adadelta(
    model: nn.Module,
    lr: PositiveFloat = 1.0,
    rho: Probability = 0.9,
    eps: PositiveFloat = 1e-6,
    weight_decay: NonNegativeFloat = 0.0,
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Adagrad with running averages in place of sums (Zeiler 2012)."""
    return torch.optim.Adadelta(
        parameter_groups(
            model,
            weight_decay,
            lr=lr,
            decay_norm_and_bias=decay_norm_and_bias,
            lr_multipliers=lr_multipliers,
        ),
        lr=lr,
        rho=rho,
        eps=eps,
    )


@OPTIMIZERS.register("rmsprop")
def rmsprop(
    model: nn.Module,
    lr: PositiveFloat = 0.01,
    alpha: Probability = 0.99,
    eps: PositiveFloat = 1e-8,
    momentum: Probability = 0.0,
    centered: bool = False,
    weight_decay: NonNegativeFloat = 0.0,
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """Steps scaled by a running average of squared gradients (Hinton's lecture notes)."""
    return torch.optim.RMSprop(
        parameter_groups(
            model,
            weight_decay,
            lr=lr,
            decay_norm_and_bias=decay_norm_and_bias,
            lr_multipliers=lr_multipliers,
        ),
        lr=lr,
        alpha=alpha,
        eps=eps,
        momentum=momentum,
        centered=centered,
    )
