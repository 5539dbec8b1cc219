"""Vision transformers: torchvision's VisionTransformer at small sizes."""

from __future__ import annotations

import math

from torch import nn

from trainkit.errors import UserError
from trainkit.registry import MODELS, PositiveInt, Probability


@MODELS.register("vit")
def vit(
    num_classes: int,
    input_shape: tuple[int, ...],
    patch_size: PositiveInt = 4,
    hidden_dim: PositiveInt = 192,
    num_layers: PositiveInt = 6,
    num_heads: PositiveInt = 3,
    mlp_dim: PositiveInt = 384,
    dropout: Probability = 0.0,
    attention_dropout: Probability = 0.0,
) -> nn.Module:
    """A ViT (Dosovitskiy et al. 2021) for square images of any size the patches tile: the
    image is cut into ``patch_size`` squares, each embedded in ``hidden_dim`` features, then
    ``num_layers`` pre-norm encoder blocks; the class token feeds the classifier.

    The defaults (patch 4, width 192, depth 6, 3 heads) suit 32x32 CIFAR: 64 patches.
    """
    from torchvision.models import VisionTransformer

    if len(input_shape) != 3:
        raise UserError(
            f"model vit needs image inputs (channels, height, width); "
            f"the data gives samples of shape {tuple(input_shape)}: use model=mlp"
        )
    channels, height, width = input_shape
    if height != width:
        raise UserError(
            f"model vit needs square images; the data gives {height}x{width}: "
            "use model=resnet_cifar"
        )
    if height % patch_size:
        divisors = [d for d in range(1, height + 1) if height % d == 0 and d <= 32]
        raise UserError(
            f"model.patch_size={patch_size} does not divide the image size {height}; "
            f"use one of {', '.join(map(str, divisors))}"
        )
    if hidden_dim % num_heads:
        raise UserError(
            f"model.hidden_dim={hidden_dim} is not divisible by model.num_heads={num_heads}; "
            f"each head takes hidden_dim / num_heads features"
        )
    model = VisionTransformer(
        image_size=height,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        dropout=dropout,
        attention_dropout=attention_dropout,
        num_classes=num_classes,
    )
    if channels != 3:
        # torchvision's patch embedding assumes RGB; same initialization as its own.
        model.conv_proj = nn.Conv2d(channels, hidden_dim, patch_size, patch_size)
        fan_in = channels * patch_size * patch_size
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(model.conv_proj.bias)
    return model
