"""Optimizer builders: torch.optim, with weight decay kept off biases and norm weights.

An optimizer is a row of ``OPTIMIZERS_OF_TORCH``: its torch class and the names of the
options trainkit exposes. A builder's signature, the schema that validation and ``trainkit
ls`` read, is made from those names, with each option's check from ``OPTION_TYPES`` and its
default from torch's own signature (the option's YAML gives the one a run uses). The options
every optimizer shares, ``decay_norm_and_bias`` (decay 1-d parameters too) and
``lr_multipliers`` (a factor on the lr of the parameters whose names match a glob pattern),
are declared once, in ``shared_options``, and applied through ``parameter_groups``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Annotated, Any

import torch
from torch import nn

from trainkit.errors import UserError
from trainkit.registry import (
    OPTIMIZERS,
    NonNegativeFloat,
    PositiveFloat,
    Probability,
    Range,
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
    layer_decay: float | None = None,
) -> list[dict]:
    """Parameter groups for a torch.optim optimizer; every parameter is in one (a frozen one
    too: it gets no gradient, so the optimizer neither steps nor decays it, and it trains
    once unfrozen).

    Biases and normalization weights (1-d) get no weight decay unless ``decay_norm_and_bias``:
    decaying a bias or a BatchNorm scale only shrinks it towards zero without regularizing
    anything useful, so common practice (and torchvision's recipes) exempts them.

    ``lr_multipliers`` maps a glob pattern on ``model.named_parameters()`` names (``"stem.*"``)
    to a factor > 0 on the lr of the parameters it matches (the first matching pattern wins).
    ``layer_decay`` (layer-wise lr decay, for fine-tuning) multiplies the lr of the model's
    k-th layer below the head (a block such as a transformer block: see ``layers``) by
    ``layer_decay ** k``; the head keeps the base lr.
    Parameters of one lr factor share groups, split into decayed and not. The first group
    always holds the base lr's decayed weights (possibly none), so ``param_groups[0]["lr"]``
    is the base lr. Raises UserError for a factor that is not > 0 or a pattern that matches
    nothing.
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
    if (patterns or layer_decay) and lr is None:
        raise ValueError("parameter_groups needs the base lr to apply lr factors")
    depth = layers(model) if layer_decay else {}
    top = max(depth.values(), default=0)

    # One (decay, no_decay) pair per lr factor; 1.0 (the base lr) first.
    buckets: dict[float, tuple[list, list]] = {1.0: ([], [])}
    for name, parameter in named:
        pattern = next((p for p in patterns if fnmatchcase(name, p)), None)
        factor = patterns[pattern] if pattern is not None else 1.0
        if layer_decay:
            factor *= layer_decay ** (top - depth[name])
        decay, no_decay = buckets.setdefault(factor, ([], []))
        decays = decay_norm_and_bias or parameter.ndim > 1
        (decay if decays else no_decay).append(parameter)

    groups = []
    for factor, (decay, no_decay) in buckets.items():
        extra = {} if factor == 1.0 else {"lr": lr * factor}
        if decay or factor == 1.0:
            groups.append({"params": decay, "weight_decay": weight_decay, **extra})
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    return groups


# Containers that stack blocks: each of their children that is not itself one is a layer.
STACKS = (nn.Sequential, nn.ModuleList)


def layers(model: nn.Module) -> dict[str, int]:
    """Each parameter's layer, counted from the input (0) to the head (the largest), in the
    order ``model.named_parameters()`` first reaches them.

    A layer is a block of a stack: the first module on a parameter's path that is in a
    Sequential or ModuleList without being one itself (a ViT encoder block, a ResNet
    block). A parameter that is in no stack belongs to the module that holds it (a patch
    embedding, a class token to the model itself). A layer with no parameter of more than
    one dimension (a norm's scale and shift) joins the layer before it, whose output it
    rescales: a stem's conv and its BatchNorm, a ViT's last block and its final LayerNorm.
    """
    named = list(model.named_parameters())
    key = {name: _block_of(model, name) for name, _ in named}
    largest_dimension: dict[str, int] = {}
    for name, parameter in named:
        largest_dimension[key[name]] = max(largest_dimension.get(key[name], 0), parameter.ndim)
    index, layer = {}, -1
    for block, dimension in largest_dimension.items():
        if dimension > 1 or layer < 0:
            layer += 1
        index[block] = layer
    return {name: index[key[name]] for name, _ in named}


def _block_of(model: nn.Module, parameter_name: str) -> str:
    path = parameter_name.split(".")[:-1]
    module = model
    for depth, part in enumerate(path):
        parent, module = module, module.get_submodule(part)
        if isinstance(parent, STACKS) and not isinstance(module, STACKS):
            return ".".join(path[: depth + 1])
    return ".".join(path)


def shared_options(
    decay_norm_and_bias: bool = False,
    lr_multipliers: dict[str, float] | None = None,
    layer_decay: Annotated[float, Range(gt=0, le=1)] | None = None,
) -> None:
    """The options every optimizer has besides its own (see ``parameter_groups``)."""


# What a config value of each exposed option of torch's optimizers must be.
OPTION_TYPES: dict[str, Any] = {
    "lr": PositiveFloat,
    "betas": Betas,
    "eps": PositiveFloat,
    "weight_decay": NonNegativeFloat,
    "momentum": Probability,
    "dampening": Probability,
    "nesterov": bool,
    "amsgrad": bool,
    "momentum_decay": NonNegativeFloat,
    "lr_decay": NonNegativeFloat,
    "initial_accumulator_value": NonNegativeFloat,
    "rho": Probability,
    "alpha": Probability,
    "centered": bool,
}


def _check_sgd(momentum: float, dampening: float, nesterov: bool, **_) -> None:
    # torch would raise a ValueError, with a traceback.
    if nesterov and (momentum <= 0 or dampening != 0):
        raise UserError(
            f"optimizer.nesterov=true needs momentum > 0 and dampening 0 "
            f"(got momentum={momentum}, dampening={dampening})"
        )


# name, torch class, the options trainkit exposes, what it is (and what else to check).
OPTIMIZERS_OF_TORCH = [
    ("sgd", torch.optim.SGD, ("lr", "momentum", "dampening", "nesterov", "weight_decay"),
     "Stochastic gradient descent with (heavy-ball or Nesterov) momentum.", _check_sgd),
    ("adam", torch.optim.Adam, ("lr", "betas", "eps", "weight_decay", "amsgrad"),
     "Adam (Kingma & Ba 2015): per-parameter step sizes from running gradient moments.", None),
    ("adamw", torch.optim.AdamW, ("lr", "betas", "eps", "weight_decay", "amsgrad"),
     "Adam with decoupled weight decay (Loshchilov & Hutter 2019).", None),
    ("adamax", torch.optim.Adamax, ("lr", "betas", "eps", "weight_decay"),
     "Adam with the infinity norm in place of the second moment.", None),
    ("nadam", torch.optim.NAdam, ("lr", "betas", "eps", "weight_decay", "momentum_decay"),
     "Adam with Nesterov momentum (Dozat 2016).", None),
    ("radam", torch.optim.RAdam, ("lr", "betas", "eps", "weight_decay"),
     "Adam with the variance of the adaptive lr rectified early on (Liu et al. 2020).", None),
    ("adagrad", torch.optim.Adagrad,
     ("lr", "lr_decay", "initial_accumulator_value", "eps", "weight_decay"),
     "Per-parameter step sizes from the sum of all past squared gradients.", None),
    ("adadelta", torch.optim.Adadelta, ("lr", "rho", "eps", "weight_decay"),
     "Adagrad with running averages in place of sums (Zeiler 2012).", None),
    ("rmsprop", torch.optim.RMSprop,
     ("lr", "alpha", "eps", "momentum", "centered", "weight_decay"),
     "Steps scaled by a running average of squared gradients (Hinton's lecture notes).", None),
]  # fmt: skip


def optimizer_builder(
    name: str,
    torch_class: type[torch.optim.Optimizer],
    options: tuple[str, ...],
    summary: str,
    check: Callable[..., None] | None = None,
) -> Callable[..., torch.optim.Optimizer]:
    """The builder of ``torch_class`` with ``options`` plus ``shared_options``: the model's
    parameter groups and the options, by name (a list as a tuple), after ``check``."""
    torch_defaults = inspect.signature(torch_class).parameters
    parameters = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [
        inspect.Parameter(
            option,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=torch_defaults[option].default,
            annotation=OPTION_TYPES[option],
        )
        for option in options
    ]
    parameters += inspect.signature(shared_options).parameters.values()
    signature = inspect.Signature(parameters)

    def build(*args, **values) -> torch.optim.Optimizer:
        bound = signature.bind(*args, **values)
        bound.apply_defaults()
        values = dict(bound.arguments)
        model = values.pop("model")
        grouping = {key: values.pop(key) for key in _SHARED}
        if check is not None:
            check(**values)
        weight_decay = values.pop("weight_decay")
        groups = parameter_groups(model, weight_decay, lr=values["lr"], **grouping)
        arguments = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return torch_class(groups, **arguments)

    # The signature is the schema: declared, not **kwargs, so every key is checked.
    build.__signature__ = signature
    build.__annotations__ = {
        **{option: OPTION_TYPES[option] for option in options},
        **shared_options.__annotations__,
    }
    build.__name__ = build.__qualname__ = name
    build.__doc__ = summary
    return build


_SHARED = tuple(inspect.signature(shared_options).parameters)

for _name, _torch_class, _options, _summary, _check in OPTIMIZERS_OF_TORCH:
    OPTIMIZERS.register(_name)(optimizer_builder(_name, _torch_class, _options, _summary, _check))
