"""A multi-layer perceptron, for tabular features (images are flattened)."""

from __future__ import annotations

import math

from torch import nn

from trainkit.models.layers import Init, Norm1d, initialize
from trainkit.registry import MODELS, PositiveInt, Probability


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
