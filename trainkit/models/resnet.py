"""ResNets: the CIFAR-style ResNet-(6n+2) for small images."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.ops import StochasticDepth

from trainkit.errors import UserError
from trainkit.models.layers import Init, Norm2d, initialize, norm2d
from trainkit.registry import MODELS, PositiveInt, Probability


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
