"""Regularizers that act inside the train loop. Several can be chosen at once.

The runner calls each regularizer at three fixed points, in this order of the loop:
``penalty`` (added to the loss), ``before_optimizer_step`` (after backward, e.g. clipping)
and ``should_stop`` (after validation). Each does nothing unless it overrides the method.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from trainkit.registry import REGULARIZERS, NonNegativeFloat, PositiveFloat, PositiveInt


class Regularizer:
    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def before_optimizer_step(self, model: nn.Module) -> None:
        pass

    def should_stop(self, monitored: float, mode: str) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@REGULARIZERS.register("grad_clip")
class GradClip(Regularizer):
    """Clip gradients by their total norm (``by: norm``) or elementwise (``by: value``)."""

    def __init__(
        self,
        max_norm: PositiveFloat = 1.0,
        by: Literal["norm", "value"] = "norm",
        norm_type: PositiveFloat = 2.0,
    ):
        self.max_norm, self.by, self.norm_type = max_norm, by, norm_type

    def before_optimizer_step(self, model: nn.Module) -> None:
        if self.by == "norm":
            nn.utils.clip_grad_norm_(model.parameters(), self.max_norm, self.norm_type)
        else:
            nn.utils.clip_grad_value_(model.parameters(), self.max_norm)


@REGULARIZERS.register("early_stopping")
class EarlyStopping(Regularizer):
    """Stop when the monitored metric has not improved by ``min_delta`` for ``patience``
    validations in a row."""

    def __init__(self, patience: PositiveInt = 10, min_delta: NonNegativeFloat = 0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best = math.nan
        self.bad_epochs = 0

    def should_stop(self, monitored: float, mode: str) -> bool:
        improvement = monitored - self.best if mode == "max" else self.best - monitored
        if math.isnan(self.best) or improvement > self.min_delta:
            self.best, self.bad_epochs = monitored, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
