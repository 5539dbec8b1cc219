"""Optimizer builders: torch.optim, with weight decay kept off biases and norm weights.

Each optimizer is registered with ``@optimizer(name, torch_class)`` on a function whose
signature declares that optimizer's own options (the schema: validation and ``trainkit ls``
read it) and whose body checks what a signature cannot. The options every optimizer shares,
``decay_norm_and_bias`` (decay 1-d parameters too) and ``lr_multipliers`` (a factor on the
lr of the parameters whose names match a glob pattern), are declared once, in
``shared_options``, and applied through ``parameter_groups``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
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


def shared_options(
    decay_norm_and_bias: bool = False, lr_multipliers: dict[str, float] | None = None
) -> None:
    """The options every optimizer has besides its own (see ``parameter_groups``)."""


def optimizer(name: str, torch_class: type[torch.optim.Optimizer]):
    """Register ``torch_class`` under ``name``: its options are the decorated function's
    parameters plus ``shared_options``, passed to ``torch_class`` by name (a list as a tuple)
    with the parameter groups built from the model and the weight decay."""

    def register(options: Callable[..., None]) -> Callable[..., torch.optim.Optimizer]:
        model = inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        signature = inspect.Signature(
            [
                model,
                *inspect.signature(options).parameters.values(),
                *inspect.signature(shared_options).parameters.values(),
            ]
        )

        def build(*args, **values) -> torch.optim.Optimizer:
            bound = signature.bind(*args, **values)
            bound.apply_defaults()
            values = dict(bound.arguments)
            module = values.pop("model")
            grouping = {key: values.pop(key) for key in _SHARED}
            options(**values)  # what the signature cannot check
            weight_decay = values.pop("weight_decay")
            groups = parameter_groups(module, weight_decay, lr=values["lr"], **grouping)
            arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            return torch_class(groups, **arguments)

        # The signature is the schema: declared, not **kwargs, so every key is checked.
        build.__signature__ = signature
        build.__annotations__ = {
            "model": "nn.Module",
            **options.__annotations__,
            **shared_options.__annotations__,
        }
        build.__name__ = build.__qualname__ = name
        build.__doc__ = options.__doc__
        return OPTIMIZERS.register(name)(build)

    return register


_SHARED = tuple(inspect.signature(shared_options).parameters)


@optimizer("sgd", torch.optim.SGD)
def sgd(
    lr: PositiveFloat = 0.1,
    momentum: Probability = 0.9,
    dampening: Probability = 0.0,
    nesterov: bool = False,
    weight_decay: NonNegativeFloat = 0.0,
) -> None:
    """Stochastic gradient descent with (heavy-ball or Nesterov) momentum.

    Raises UserError for Nesterov without momentum or with dampening (torch would raise a
    ValueError with a traceback).
    """
    if nesterov and (momentum <= 0 or dampening != 0):
        raise UserError(
            f"optimizer.nesterov=true needs momentum > 0 and dampening 0 "
            f"(got momentum={momentum}, dampening={dampening})"
        )


@optimizer("adam", torch.optim.Adam)
def adam(
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
    amsgrad: bool = False,
) -> None:
    """Adam (Kingma & Ba 2015): per-parameter step sizes from running gradient moments."""


@optimizer("adamw", torch.optim.AdamW)
def adamw(
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.01,
    amsgrad: bool = False,
) -> None:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019)."""


@optimizer("adamax", torch.optim.Adamax)
def adamax(
    lr: PositiveFloat = 2e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
) -> None:
    """Adam with the infinity norm in place of the second moment."""


@optimizer("nadam", torch.optim.NAdam)
def nadam(
    lr: PositiveFloat = 2e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
    momentum_decay: NonNegativeFloat = 4e-3,
) -> None:
    """Adam with Nesterov momentum (Dozat 2016)."""


@optimizer("radam", torch.optim.RAdam)
def radam(
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
) -> None:
    """Adam with the variance of the adaptive lr rectified early on (Liu et al. 2020)."""


@optimizer("adagrad", torch.optim.Adagrad)
def adagrad(
    lr: PositiveFloat = 0.01,
    lr_decay: NonNegativeFloat = 0.0,
    initial_accumulator_value: NonNegativeFloat = 0.0,
    eps: PositiveFloat = 1e-10,
    weight_decay: NonNegativeFloat = 0.0,
) -> None:
    """Per-parameter step sizes from the sum of all past squared gradients."""


@optimizer("adadelta", torch.optim.Adadelta)
def adadelta(
    lr: PositiveFloat = 1.0,
    rho: Probability = 0.9,
    eps: PositiveFloat = 1e-6,
    weight_decay: NonNegativeFloat = 0.0,
) -> None:
    """Adagrad with running averages in place of sums (Zeiler 2012)."""


@optimizer("rmsprop", torch.optim.RMSprop)
def rmsprop(
    lr: PositiveFloat = 0.01,
    alpha: Probability = 0.99,
    eps: PositiveFloat = 1e-8,
    momentum: Probability = 0.0,
    centered: bool = False,
    weight_decay: NonNegativeFloat = 0.0,
) -> None:
    """Steps scaled by a running average of squared gradients (Hinton's lecture notes)."""
