"""Loss builders (torch.nn losses, configured from the ``loss`` node)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.errors import UserError
from trainkit.registry import (
    LOSSES,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    Probability,
    Range,
)

UnitFloat = Annotated[float, Range(ge=0, le=1)]  # a weight in [0, 1], ends included


@dataclass(frozen=True)
class Fit:
    """Which task's outputs a loss takes, and how it is called: declared where the loss is
    registered (``@fits(...)``), so adding a loss means writing it, and nothing else."""

    task: str  # the task that calls it (trainkit.tasks gives it these inputs)
    inputs: str  # what it is called with, for messages
    soft_targets: bool = False  # takes class probabilities too (mixup and cutmix make them)


def fits(task: str, inputs: str, soft_targets: bool = False):
    """Decorator: the builder's loss belongs to ``task`` (a plugin loss without it is
    trusted with any task)."""

    def mark(builder):
        builder.fit = Fit(task, inputs, soft_targets)
        return builder

    return mark


def fit_of(name: str) -> Fit | None:
    """The ``Fit`` of the registered loss ``name``, or None (a plugin's, undeclared)."""
    return getattr(LOSSES.get(name), "fit", None)


CLASS_INDICES = "logits and class indices"
CONTINUOUS = "predictions and continuous targets"


def _per_class(key: str, values: list[float], num_classes: int) -> torch.Tensor:
    if len(values) != num_classes:
        raise UserError(
            f"loss.{key} has {len(values)} entries but the data has {num_classes} classes"
        )
    return torch.tensor(list(values), dtype=torch.float32)


# --- classification: logits and class indices ---------------------------------------------


ClassWeights = Literal["balanced"] | list[NonNegativeFloat] | None


def _class_weight_tensor(
    weights: ClassWeights, num_classes: int, class_counts: list[int] | None
) -> torch.Tensor | None:
    """Per-class loss weights: one number per class, or ``balanced``: each class weighted by
    n_samples / (n_classes * its count) in the train split (scikit-learn's balanced), so
    that a rare class counts as much as a common one."""
    if weights is None:
        return None
    if weights == "balanced":
        if class_counts is None:  # (a model rebuilt without its data: the loss is not used)
            return None
        counts = torch.tensor(class_counts, dtype=torch.float32)
        if (counts == 0).any():
            missing = int((counts == 0).nonzero()[0])
            raise UserError(
                f"loss.class_weights=balanced: class {missing} has no train sample; give "
                "the weights as a list"
            )
        return counts.sum() / (len(counts) * counts)
    return _per_class("class_weights", weights, num_classes)


@LOSSES.register("cross_entropy")
@fits("classification", CLASS_INDICES, soft_targets=True)
def cross_entropy(
    num_classes: int,
    class_counts: list[int] | None = None,
    label_smoothing: Probability = 0.0,
    class_weights: ClassWeights = None,
) -> nn.Module:
    """Softmax cross-entropy on logits and class indices; per-class weights: a list, or
    balanced (by the train split's class counts)."""
    weight = _class_weight_tensor(class_weights, num_classes, class_counts)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def mean_over(loss_fn: nn.Module, targets: torch.Tensor) -> torch.Tensor | int:
    """What ``loss_fn``'s mean over a batch divides by, to weigh the batch with when a split's
    batches are averaged: for a class-weighted cross-entropy the sum of the targets' class
    weights (torch's mean), else the number of samples."""
    weight = getattr(loss_fn, "weight", None)
    if isinstance(loss_fn, nn.CrossEntropyLoss) and weight is not None:
        if not targets.is_floating_point():  # (class probabilities: a mean over samples)
            return weight[targets].sum()
    return targets.shape[0]


class NLLFromLogits(nn.Module):
    """Negative log-likelihood of logits: log_softmax over dim 1, then ``nn.NLLLoss``."""

    def __init__(self):
        super().__init__()
        self.nll = nn.NLLLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.nll(F.log_softmax(logits, dim=1), target)


@LOSSES.register("nll")
@fits("classification", CLASS_INDICES)
def nll(from_logits: bool = True) -> nn.Module:
    """Negative log-likelihood on logits (log-probs if not from_logits) and class indices."""
    return NLLFromLogits() if from_logits else nn.NLLLoss()


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): mean of -alpha_t (1 - p_t)^gamma log p_t.

    ``alpha`` is None (no weighting), a 0-d tensor (the same weight for every class) or one
    weight per class; the mean is over samples, not weighted by alpha.
    """

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", alpha)  # a buffer, so .to(device) moves it

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -log_p
        if self.gamma:  # skipped at 0: the gradient of (1 - p)^gamma is then not needed
            loss = loss * (1 - log_p.exp()).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha if self.alpha.dim() == 0 else self.alpha[target])
        return loss.mean()


@LOSSES.register("focal")
@fits("classification", CLASS_INDICES)
def focal(
    num_classes: int,
    gamma: NonNegativeFloat = 2.0,
    alpha: UnitFloat | list[UnitFloat] | None = None,
) -> nn.Module:
    """Softmax focal loss on logits and class indices; gamma=0 and alpha=null is cross-entropy."""
    if isinstance(alpha, (int, float)):
        alpha_tensor = torch.tensor(float(alpha))
    else:
        alpha_tensor = None if alpha is None else _per_class("alpha", alpha, num_classes)
    return FocalLoss(gamma=gamma, alpha=alpha_tensor)


@LOSSES.register("bce")
@fits("classification", "one logit per sample and 0/1 targets")
def bce(
    num_classes: int,
    pos_weight: PositiveFloat | list[PositiveFloat] | None = None,
) -> nn.Module:
    """Binary cross-entropy on logits (one per sample, or per class) and 0/1 float targets."""
    if isinstance(pos_weight, (int, float)):
        pos_weight_tensor = torch.tensor(float(pos_weight))
    else:
        pos_weight_tensor = (
            None if pos_weight is None else _per_class("pos_weight", pos_weight, num_classes)
        )
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight_tensor)


# --- regression: predictions and continuous targets ----------------------------------------


@LOSSES.register("l1")
@fits("regression", CONTINUOUS)
def l1() -> nn.Module:
    """Mean absolute error between predictions and targets of the same shape."""
    return nn.L1Loss()


@LOSSES.register("smooth_l1")
@fits("regression", CONTINUOUS)
def smooth_l1(beta: PositiveFloat = 1.0) -> nn.Module:
    """Smooth L1 on predictions and targets: squared below ``beta``, absolute above."""
    return nn.SmoothL1Loss(beta=beta)


@LOSSES.register("mse")
@fits("regression", CONTINUOUS)
def mse() -> nn.Module:
    """Mean squared error between predictions and targets of the same shape."""
    return nn.MSELoss()


@LOSSES.register("huber")
@fits("regression", CONTINUOUS)
def huber(delta: PositiveFloat = 1.0) -> nn.Module:
    """Huber loss on predictions and targets: squared below ``delta``, linear above."""
    return nn.HuberLoss(delta=delta)


@LOSSES.register("poisson_nll")
@fits("regression", CONTINUOUS)
def poisson_nll(log_input: bool = True, full: bool = False, eps: PositiveFloat = 1e-8) -> nn.Module:
    """Poisson negative log-likelihood on predicted rates (or log-rates) and count targets."""
    return nn.PoissonNLLLoss(log_input=log_input, full=full, eps=eps)


# --- sequences, ranking and embeddings -----------------------------------------------------


@LOSSES.register("ctc")
@fits("sequence", "log-probabilities (T, N, C), targets, input and target lengths")
def ctc(blank: NonNegativeInt = 0, zero_infinity: bool = False) -> nn.Module:
    """CTC on log-probabilities (T, N, C), targets, input lengths and target lengths."""
    return nn.CTCLoss(blank=blank, zero_infinity=zero_infinity)


@LOSSES.register("margin_ranking")
@fits("metric_learning", "two score tensors and a +1/-1 target")
def margin_ranking(margin: NonNegativeFloat = 0.0) -> nn.Module:
    """Margin ranking on two score tensors and a +1/-1 target saying which should rank higher."""
    return nn.MarginRankingLoss(margin=margin)


@LOSSES.register("soft_margin")
@fits("metric_learning", "scores and +1/-1 targets")
def soft_margin() -> nn.Module:
    """Two-class logistic loss on scores and +1/-1 targets."""
    return nn.SoftMarginLoss()


@LOSSES.register("triplet_margin")
@fits("metric_learning", "anchor, positive and negative embeddings")
def triplet_margin(
    margin: NonNegativeFloat = 1.0, p: PositiveFloat = 2.0, swap: bool = False
) -> nn.Module:
    """Triplet margin loss on anchor, positive and negative embeddings (p-norm distances)."""
    return nn.TripletMarginLoss(margin=margin, p=p, swap=swap)
