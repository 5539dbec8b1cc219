"""The text transformer: token embedding, positional encoding, pre-norm encoder, pooling."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from trainkit.errors import UserError
from trainkit.models.layers import Init, initialize
from trainkit.registry import MODELS, PositiveInt, Probability

PADDING = 0  # the token id of padding, as trainkit.data.text writes it


@MODELS.register("text_transformer")
def text_transformer(
    num_classes: int,
    input_shape: tuple[int, ...],
    vocab_size: int | None = None,
    embed_dim: PositiveInt = 128,
    num_layers: PositiveInt = 2,
    num_heads: PositiveInt = 4,
    mlp_dim: PositiveInt = 256,
    dropout: Probability = 0.1,
    max_len: PositiveInt = 128,
    positional: Literal["learned", "sinusoidal"] = "learned",
    pooling: Literal["mean", "cls"] = "mean",
    init: Init = "default",
) -> nn.Module:
    """A pre-norm transformer encoder over token ids (padding 0) with a linear classifier.

    ``pooling`` is ``mean`` (over the non-padding tokens) or ``cls`` (a learned token put
    before the text). Raises UserError when the data has no tokens, its sequences are longer
    than ``max_len``, or ``embed_dim`` does not split into ``num_heads`` heads.
    """
    if vocab_size is None:
        raise UserError("model text_transformer needs token inputs; use data=text_csv")
    if input_shape[0] > max_len:
        raise UserError(
            f"model.max_len={max_len} is shorter than the data's sequences "
            f"(data.max_len={input_shape[0]}); set model.max_len={input_shape[0]} or more"
        )
    if embed_dim % num_heads:
        raise UserError(
            f"model.embed_dim={embed_dim} is not divisible by model.num_heads={num_heads}; "
            "each head gets embed_dim / num_heads features"
        )
    model = TextTransformer(
        vocab_size=vocab_size,
        num_classes=num_classes,
        embed_dim=embed_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        dropout=dropout,
        max_len=max_len,
        positional=positional,
        pooling=pooling,
    )
    return initialize(model, init)


class TextTransformer(nn.Module):
    """Token ids (batch, length) -> class logits (batch, num_classes)."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float,
        max_len: int,
        positional: str,
        pooling: str,
    ):
        super().__init__()
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PADDING)
        positions = max_len + (pooling == "cls")
        if positional == "learned":
            self.position = nn.Parameter(torch.zeros(1, positions, embed_dim))
            nn.init.trunc_normal_(self.position, std=0.02)
        else:  # fixed, so not saved in checkpoints
            self.register_buffer("position", sinusoidal(positions, embed_dim), persistent=False)
        if pooling == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            embed_dim, num_heads, mlp_dim, dropout, "gelu", batch_first=True, norm_first=True
        )
        # Nested tensors do not support pre-norm layers; off, torch does not warn about it.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)  # pre-norm layers leave the last output unnormed
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = tokens != PADDING  # (batch, length): True for real tokens
        x = self.embed(tokens)
        if self.pooling == "cls":
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
            keep = torch.cat([keep.new_ones(len(x), 1), keep], dim=1)
        x = self.dropout(x + self.position[:, : x.shape[1]])
        # A row of padding only would leave attention nothing to attend to (softmax over no
        # keys is NaN); let such rows attend to their padding. Mean pooling then ignores them.
        ignore = ~keep & keep.any(dim=1, keepdim=True)
        x = self.norm(self.encoder(x, src_key_padding_mask=ignore))
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            weights = keep.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
        return self.classifier(self.dropout(pooled))


def sinusoidal(length: int, dim: int) -> torch.Tensor:
    """The fixed encoding of Vaswani et al. (2017), shape (1, length, dim): sines in the even
    features, cosines in the odd, wavelengths from 2*pi to 10000*2*pi."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    encoding = torch.zeros(length, dim)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return encoding.unsqueeze(0)
