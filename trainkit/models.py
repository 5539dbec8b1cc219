"""Model builders. Each takes ``num_classes`` and ``input_shape`` from the data at run time."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from torch import nn
from torchvision.ops import StochasticDepth

from trainkit.errors import UserError
from trainkit.registry import MODELS, PositiveInt, Probability

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


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al., 2016), post-activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
        drop_path: float = 0.0,
    ):
        super().__init__()
        # Stochastic depth: drop the whole residual branch of a sample with this probability.
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                norm(out_channels),
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """The CIFAR ResNet: a 3x3 stem (no early downsampling, for small images), three stages
    of ``blocks_per_stage`` basic blocks at widths w, 2w, 4w, global pooling, a classifier."""

    def __init__(
        self,
        in_channels,
        num_classes,
        blocks_per_stage,
        width,
        dropout,
        norm=nn.BatchNorm2d,
        drop_path=0.0,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            norm(width),
            nn.ReLU(inplace=True),
        )
        layers, channels = [], width
        blocks = 3 * blocks_per_stage
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                # The drop rate grows linearly with depth (Huang et al. 2016), up to drop_path.
                rate = drop_path * len(layers) / max(blocks - 1, 1)
                layers.append(BasicBlock(channels, stage_width, stride, norm, rate))
                channels = stage_width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.classifier(self.dropout(x))


@MODELS.register("resnet_cifar")
def resnet_cifar(
    num_classes: int,
    input_shape: tuple[int, ...],
    depth: PositiveInt = 20,
    width: PositiveInt = 16,
    dropout: Probability = 0.0,
    init: Init = "default",
    norm: Norm2d = "batch",
    drop_path: Probability = 0.0,
) -> nn.Module:
    """ResNet-(6n+2) for small images: depth 8, 14, 20, 32, 44, 56, 110."""
    if (depth - 2) % 6 or depth < 8:
        raise UserError(f"model.depth={depth} is not 6n+2; use 8, 14, 20, 32, 44, 56 or 110")
    if len(input_shape) != 3:
        raise UserError(
            f"model resnet_cifar needs image inputs (channels, height, width); "
            f"the data gives samples of shape {tuple(input_shape)}: use model=mlp"
        )
    model = ResNetCifar(
        input_shape[0], num_classes, (depth - 2) // 6, width, dropout, norm2d(norm), drop_path
    )
    return initialize(model, init)


@MODELS.register("mlp")
def mlp(
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: list[PositiveInt] = (256, 256),
    dropout: Probability = 0.0,
    init: Init = "default",
    norm: Norm1d = "none",
) -> nn.Module:
    """Fully connected layers with ReLU, for flat features (images are flattened).

    ``norm`` puts a BatchNorm1d or LayerNorm after each hidden Linear, before its ReLU.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for size in hidden:
        layers.append(nn.Linear(features, size))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(size))
        elif norm == "layer":
            layers.append(nn.LayerNorm(size))
        layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
        features = size
    layers.append(nn.Linear(features, num_classes))
    return initialize(nn.Sequential(*layers), init)
