"""What every model shares: weight initialization schemes and normalization layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import nn

Init = Literal[
    "default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
    "trunc_normal",
]
Norm2d = Literal["batch", "group", "layer", "instance"]
Norm1d = Literal["none", "batch", "layer"]

# --- initialization ------------------------------------------------------------------------

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def initialize(model: nn.Module, scheme: Init = "default") -> nn.Module:
    """Re-initialize every Conv and Linear weight by ``scheme``; zero their biases.

    ``default`` keeps torch's own initialization untouched. Otherwise norm layers get
    weight 1 and bias 0. Kaiming (He et al. 2015, "MSRA") uses the ReLU gain with fan_out for
    convolutions (as in torchvision's ResNets) and fan_in for Linear layers, so the
    classifier's outputs keep the scale of its inputs. ``trunc_normal`` is N(0, 0.02)
    cut at two standard deviations (as in ViT and timm).
    """
    if scheme == "default":
        return model
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            _init_weight(module.weight, scheme, conv=not isinstance(module, nn.Linear))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _NORM_LAYERS):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    return model


def _init_weight(weight: nn.Parameter, scheme: str, conv: bool) -> None:
    mode = "fan_out" if conv else "fan_in"
    if scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight)
    elif scheme == "kaiming_normal":
        nn.init.kaiming_normal_(weight, mode=mode, nonlinearity="relu")
    elif scheme == "kaiming_uniform":
        nn.init.kaiming_uniform_(weight, mode=mode, nonlinearity="relu")
    elif scheme == "orthogonal":
        nn.init.orthogonal_(weight)
    elif scheme == "trunc_normal":
        nn.init.trunc_normal_(weight, std=0.02, a=-0.04, b=0.04)
    else:
        raise ValueError(f"unknown init scheme {scheme!r}")


# --- normalization layers ------------------------------------------------------------------


def group_count(channels: int) -> int:
    """Groups for GroupNorm: the largest divisor of ``channels`` that is at most 32 and
    leaves at least 4 channels per group (16 channels -> 4 groups, 64 -> 16, 256 -> 32)."""
    limit = max(1, min(32, channels // 4))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def norm2d(kind: Norm2d) -> Callable[[int], nn.Module]:
    """A factory ``channels -> layer`` for the normalization after each convolution.

    ``layer`` is GroupNorm with one group (normalizes over channels and pixels, the usual
    layer norm for conv nets); ``instance`` is GroupNorm with a group per channel.
    """
    factories = {
        "batch": nn.BatchNorm2d,
        "group": lambda c: nn.GroupNorm(group_count(c), c),
        "layer": lambda c: nn.GroupNorm(1, c),
        "instance": lambda c: nn.GroupNorm(c, c),
    }
    return factories[kind]
