"""The sequence reader for CTC: convolutions, then a transformer, one output per step."""

from __future__ import annotations

import torch
from torch import nn

from trainkit.errors import UserError
from trainkit.models.layers import Init, initialize
from trainkit.registry import MODELS, PositiveInt, Probability


class ConvTransformer(nn.Module):
    """Reads an image left to right: a small conv net turns it into a row of feature
    columns (height averaged away, width halved), a pre-norm transformer encoder relates
    the columns, and a linear layer scores every class at every column.

    Output: (batch, time, classes) with time = width // 2.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        num_classes: int,
        channels: int,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float,
    ):
        super().__init__()

        def conv(inputs: int, outputs: int) -> list[nn.Module]:
            return [
                nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *conv(in_channels, channels),
            *conv(channels, 2 * channels),
            nn.MaxPool2d(2),  # halves the width: time steps of two pixel columns
            *conv(2 * channels, 2 * channels),
        )
        steps = width // 2
        self.project = nn.Linear(2 * channels, embed_dim)
        self.position = nn.Parameter(torch.zeros(1, steps, embed_dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            num_heads,
            mlp_dim,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,  # pre-norm: trains stably without a long warmup
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        columns = self.features(images).mean(dim=2).transpose(1, 2)  # (batch, time, features)
        hidden = self.encoder(self.project(columns) + self.position)
        return self.classifier(self.norm(hidden))


@MODELS.register("conv_transformer")
def conv_transformer(
    num_classes: int,
    input_shape: tuple[int, ...],
    channels: PositiveInt = 32,
    embed_dim: PositiveInt = 64,
    num_layers: PositiveInt = 2,
    num_heads: PositiveInt = 4,
    mlp_dim: PositiveInt = 128,
    dropout: Probability = 0.1,
    init: Init = "default",
) -> nn.Module:
    """Conv + transformer reader of image sequences (task=sequence): (batch, time, classes)."""
    if len(input_shape) != 3 or input_shape[-1] < 2:
        raise UserError(
            f"model conv_transformer reads images (channels, height, width); the data gives "
            f"samples of shape {tuple(input_shape)}: use data=digit_strings"
        )
    if embed_dim % num_heads:
        raise UserError(
            f"model.embed_dim={embed_dim} is not divisible by model.num_heads={num_heads}; "
            "pick num_heads that divides embed_dim"
        )
    channels_in, _, width = input_shape
    model = ConvTransformer(
        channels_in,
        width,
        num_classes,
        channels,
        embed_dim,
        num_layers,
        num_heads,
        mlp_dim,
        dropout,
    )
    return initialize(model, init)
