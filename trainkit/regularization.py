"""Regularizers. Several can be chosen at once: ``'regularization=[l1,grad_clip]'``.

The runner calls each regularizer at fixed points, in this order:
``configure`` (before anything is built: weight decay, dropout and label smoothing are
settings of the optimizer, model and loss), ``mix_batch`` (mixup and cutmix, before the
forward pass), ``penalty`` (added to the loss each step),
``before_optimizer_step`` (after backward: clipping), ``after_optimizer_step`` (the EMA's
update), ``evaluation_model`` (what validation and test evaluate) and ``should_stop``
(after validation). Each does nothing unless it overrides the method.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import math
from typing import Annotated, Literal

import torch
from omegaconf import DictConfig, open_dict
from torch import nn
from torchvision.transforms import v2

from trainkit.errors import UserError
from trainkit.losses import fit_of
from trainkit.paths import option_defaults
from trainkit.registry import (
    GROUP_REGISTRIES,
    LOSSES,
    REGULARIZERS,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Probability,
    Range,
)


class Regularizer:
    def configure(self, cfg: DictConfig) -> None:
        pass

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def before_optimizer_step(self, model: nn.Module) -> None:
        pass

    def after_optimizer_step(self, model: nn.Module) -> None:
        pass

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """The module that validation and test evaluate (the EMA's average, say)."""
        return model

    def mix_batch(
        self, inputs: torch.Tensor, targets: torch.Tensor, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a training batch (mixup, cutmix); targets may come back as class probabilities."""
        return inputs, targets

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
        norm_type: Annotated[float, Range(gt=0, finite=False)] = 2.0,  # inf: the max norm
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


def _set(cfg: DictConfig, node: str, key: str, value, why: str) -> None:
    """Set ``cfg.node.key`` to the regularizer's ``value``, refusing when that component has
    no such parameter, or when the config sets that key to another value as well (two
    spellings of one setting: which one wins should not be a surprise)."""
    registry = GROUP_REGISTRIES[node]
    name = cfg[node].name
    parameter = inspect.signature(registry.get(name)).parameters.get(key)
    if parameter is None:
        raise UserError(f"{why} needs a {node} with a {key} parameter; {node} {name!r} has none")
    current = cfg[node].get(key)
    default = option_defaults(node, name).get(key, parameter.default)
    if current is not None and current != value and current != default:
        raise UserError(
            f"{why} sets {node}.{key}={value} and {node}.{key}={current} is set too; keep one "
            f"(drop {node}.{key}, or give {why} the value {current})"
        )
    with open_dict(cfg):
        cfg[node][key] = value


@REGULARIZERS.register("weight_decay")
class WeightDecay(Regularizer):
    """L2 weight decay through the optimizer (decoupled for adamw); sets optimizer.weight_decay."""

    def __init__(self, strength: NonNegativeFloat = 5e-4):
        self.strength = strength

    def configure(self, cfg: DictConfig) -> None:
        _set(cfg, "optimizer", "weight_decay", self.strength, "regularization.weight_decay")


@REGULARIZERS.register("dropout")
class Dropout(Regularizer):
    """Dropout rate before the classifier, overriding the model's own ``dropout``."""

    def __init__(self, rate: Probability = 0.5):
        self.rate = rate

    def configure(self, cfg: DictConfig) -> None:
        _set(cfg, "model", "dropout", self.rate, "regularization.dropout")


@REGULARIZERS.register("label_smoothing")
class LabelSmoothing(Regularizer):
    """Soften one-hot targets: (1 - eps) * onehot + eps / classes; sets loss.label_smoothing."""

    def __init__(self, smoothing: Probability = 0.1):
        self.smoothing = smoothing

    def configure(self, cfg: DictConfig) -> None:
        _set(cfg, "loss", "label_smoothing", self.smoothing, "regularization.label_smoothing")


class _NormPenalty(Regularizer):
    """Shared by l1 and l2: which parameters are penalized."""

    def __init__(self, strength: float, include: list[str], weights_only: bool):
        self.strength, self.include, self.weights_only = strength, list(include), weights_only
        self._chosen: list[torch.Tensor] | None = None

    def parameters(self, model: nn.Module) -> list[torch.Tensor]:
        """The parameters ``include`` names, frozen ones too: chosen at the first step, they
        must not leave out those that finetune.unfreeze_at_epoch unfreezes later (while
        frozen, their penalty is a constant, and has no gradient)."""
        if self._chosen is None:  # chosen once: names do not change during a run
            self._chosen = [
                parameter
                for name, parameter in model.named_parameters()
                if not (self.weights_only and parameter.ndim <= 1)
                and any(fnmatch.fnmatchcase(name, pattern) for pattern in self.include)
            ]
            if not self._chosen:
                names = ", ".join(name for name, _ in list(model.named_parameters())[:4])
                raise UserError(
                    f"regularization: include={self.include} matches no parameter; "
                    f"names look like {names}"
                )
        return self._chosen

    def norms(self, model: nn.Module, order: int) -> torch.Tensor:
        """The ``order``-norm of each parameter penalized, in one batched call for all of
        them (not one Python call each); the L1 norm's gradient at 0 is 0, as abs()'s is."""
        return torch.stack(torch._foreach_norm(self.parameters(model), order))


@REGULARIZERS.register("l1")
class L1(_NormPenalty):
    """Adds strength * sum |W| to the loss (its gradient: strength * sign(W)); sparsifies."""

    def __init__(
        self,
        strength: NonNegativeFloat = 1e-5,
        include: list[str] = ("*",),
        weights_only: bool = True,
    ):
        super().__init__(strength, include, weights_only)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return self.strength * self.norms(model, 1).sum()


@REGULARIZERS.register("l2")
class L2(_NormPenalty):
    """Adds strength / 2 * sum W^2 to the loss (its gradient: strength * W), explicitly."""

    def __init__(
        self,
        strength: NonNegativeFloat = 5e-4,
        include: list[str] = ("*",),
        weights_only: bool = True,
    ):
        super().__init__(strength, include, weights_only)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return 0.5 * self.strength * self.norms(model, 2).square().sum()


@REGULARIZERS.register("ema")
class EMA(Regularizer):
    """Exponential moving average of the weights (and BatchNorm statistics), updated after
    every optimizer step: ema = d * ema + (1 - d) * w. Validation, the best checkpoint and
    the test use the average; training continues on the raw weights.

    The average starts as the weights after the first optimizer step (never the random
    initial ones). With ``warmup``, the n-th update after that takes d = min(decay, (1 + n) /
    (10 + n)) (TensorFlow's ExponentialMovingAverage's rule), so that a short run is judged
    on an average of its recent weights.
    """

    def __init__(self, decay: Annotated[float, Range(gt=0, lt=1)] = 0.999, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.updates = 0  # a Python int: reading a count off the GPU would wait for it
        self.average: nn.Module | None = None
        self._pending_state: dict | None = None

    def _decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    def _average_of(self, model: nn.Module) -> nn.Module:
        if self.average is None:
            self.average = copy.deepcopy(model).eval().requires_grad_(False)
            if self._pending_state is not None:
                self.average.load_state_dict(self._pending_state)
            # Pairs of lists (the average's tensors, the model's), made once: optimizers update
            # parameters in place, BatchNorm its statistics, and load_state_dict (a resume, a
            # rollback) copies into them, so the lists keep holding the live tensors.
            self._pairs = tuple(
                zip(_tensor_groups(self.average), _tensor_groups(model), strict=True)
            )
        return self.average

    def after_optimizer_step(self, model: nn.Module) -> None:
        self._average_of(model)
        parameters, float_buffers, other_buffers = self._pairs
        # A few batched calls, whatever the number of tensors; no value is read off the device.
        with torch.no_grad():
            if self.updates == 0:  # the first update copies the weights
                for average, current in self._pairs:
                    if average:
                        torch._foreach_copy_(average, current)
            else:
                decay = self._decay_at(self.updates)
                torch._foreach_lerp_(*parameters, 1 - decay)
                # Buffers are blended as d * ema + (1 - d) * b: a constant -inf buffer (an
                # attention mask) stays -inf, where lerp would make it nan.
                if float_buffers[0]:
                    torch._foreach_mul_(float_buffers[0], decay)
                    torch._foreach_add_(*float_buffers, alpha=1 - decay)
                if other_buffers[0]:  # num_batches_tracked, boolean masks: copied, not averaged
                    torch._foreach_copy_(*other_buffers)
        self.updates += 1

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        return self._average_of(model) if self.updates > 0 else model

    def state_dict(self) -> dict:
        averaged = None if self.average is None else self.average.state_dict()
        return {"averaged": averaged, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self._pending_state = state["updates"], state["averaged"]
        if self.average is not None and self._pending_state is not None:
            self.average.load_state_dict(self._pending_state)  # in place: the lists stay valid


def _tensor_groups(module: nn.Module) -> tuple[list[torch.Tensor], ...]:
    """The parameters, the floating-point buffers and the other buffers, in a fixed order."""
    buffers = list(module.buffers())
    return (
        list(module.parameters()),
        [buffer for buffer in buffers if buffer.is_floating_point()],
        [buffer for buffer in buffers if not buffer.is_floating_point()],
    )


@REGULARIZERS.register("drop_path")
class DropPath(Regularizer):
    """Stochastic depth (Huang et al. 2016): residual blocks are skipped at random in training;
    sets the model's ``drop_path`` (the last block's rate)."""

    def __init__(self, rate: Probability = 0.1):
        self.rate = rate

    def configure(self, cfg: DictConfig) -> None:
        _set(cfg, "model", "drop_path", self.rate, "regularization.drop_path")


class _BatchMix(Regularizer):
    """Shared by mixup and cutmix: torchvision's batch transform, applied with probability p."""

    transform_class: type

    def __init__(self, alpha: float, p: float):
        self.alpha, self.p = alpha, p
        self._transform = None

    def configure(self, cfg: DictConfig) -> None:
        if cfg.task.name != "classification":  # (no loss would make the targets classes)
            raise UserError(
                f"regularization.{self.name} mixes class labels, and task={cfg.task.name} has "
                "none; it is for task=classification: leave it out"
            )
        # Mixed targets are class probabilities, which only some losses take.
        fit = fit_of(cfg.loss.name) if cfg.loss.name in LOSSES else None
        if fit is not None and not fit.soft_targets:
            takers = [name for name in LOSSES.names() if getattr(fit_of(name), "soft_targets", 0)]
            raise UserError(
                f"regularization.{self.name} mixes targets into class probabilities, which "
                f"loss={cfg.loss.name} does not take; use loss={' or loss='.join(takers)}"
            )

    def mix_batch(self, inputs, targets, num_classes):
        if inputs.ndim != 4:  # (torchvision's transforms take batches of images only)
            raise UserError(
                f"regularization.{self.name} mixes images, and this data's inputs are not "
                f"images (each of shape {tuple(inputs.shape[1:])}); leave it out"
            )
        if targets.ndim > 1 or torch.rand(()).item() >= self.p:
            return inputs, targets  # already mixed by the other one, or not this batch
        if self._transform is None:
            self._transform = self.transform_class(alpha=self.alpha, num_classes=num_classes)
        return self._transform(inputs, targets)


@REGULARIZERS.register("mixup")
class MixUp(_BatchMix):
    """mixup (Zhang et al. 2018): blend pairs of images and their labels, lambda ~ Beta(a, a)."""

    name, transform_class = "mixup", v2.MixUp

    def __init__(self, alpha: PositiveFloat = 0.2, p: Annotated[float, Range(ge=0, le=1)] = 1.0):
        super().__init__(alpha, p)


@REGULARIZERS.register("cutmix")
class CutMix(_BatchMix):
    """CutMix (Yun et al. 2019): paste a patch of another image; labels mixed by patch area."""

    name, transform_class = "cutmix", v2.CutMix

    def __init__(self, alpha: PositiveFloat = 1.0, p: Annotated[float, Range(ge=0, le=1)] = 1.0):
        super().__init__(alpha, p)
