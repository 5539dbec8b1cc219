"""Fine-tuning: starting from a trained (or pretrained) model, and freezing parts of it.

- ``init_from=PATH`` (a checkpoint, a run directory, or a .pth state dict): every tensor
  whose name and shape fit is loaded, a head for another number of classes starts fresh;
  what was loaded, started fresh and left out is said once.
- ``finetune.freeze=[PATTERN, ...]``: parameters whose names match a glob (``layer1.*``)
  are frozen, until ``finetune.unfreeze_at_epoch`` (0: never); frozen parameters get no
  gradient, so the optimizer neither steps nor decays them.
- ``finetune.freeze_norm=true``: batch-norm layers keep their running statistics.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit import checkpoint
from trainkit.errors import UserError
from trainkit.reporting import log


def init_from(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load what fits of the weights at ``path`` into ``model`` (see ``load_matching``),
    and say what was done; UserError for a file that holds no weights."""
    path = Path(path).expanduser()
    source = checkpoint.find(path, key="init_from") if path.is_dir() else path
    if not source.is_file():
        raise UserError(f"init_from={path}: no such file or run directory")
    weights = _weights(source)
    report = checkpoint.load_matching(model, weights)
    if not report["loaded"]:
        raise UserError(
            f"init_from={path}: none of its {len(weights)} tensors fits this model "
            f"({_first_misfit(model, weights)}); start from a run of the same model, or its "
            "torchvision weights"
        )
    parts = [f"loaded {len(report['loaded'])} tensors from {source}"]
    if report["reinitialized"]:
        parts.append(f"started fresh (another shape): {', '.join(report['reinitialized'][:6])}")
    if report["left_out"]:
        parts.append(f"left out (not in both): {', '.join(report['left_out'][:6])}")
    log.info("init_from: " + "; ".join(parts))
    return report


def _first_misfit(model: nn.Module, weights: dict[str, Any]) -> str:
    own = model.state_dict()
    for key, value in weights.items():
        if key in own and isinstance(value, torch.Tensor):
            return f"{key} is {tuple(value.shape)} there and {tuple(own[key].shape)} here"
    return f"it holds {next(iter(weights))}, ..., the model {next(iter(own))}, ..."


def _weights(path: Path) -> dict[str, Any]:
    """The tensors of a trainkit checkpoint (its evaluation weights: the EMA's, if kept) or
    of a plain state dict, loaded as data only."""
    state = checkpoint.read(path, f"init_from={path}")
    if isinstance(state, dict) and isinstance(state.get("evaluation_model"), dict):
        state = state["evaluation_model"]
    tensors = isinstance(state, dict) and any(isinstance(v, torch.Tensor) for v in state.values())
    if not tensors:
        raise UserError(
            f"init_from={path} holds no state dict; give a trainkit run or checkpoint, or a "
            "file of torch.save(model.state_dict())"
        )
    return state


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Freeze the parameters whose names match one of ``patterns`` (globs); returns their
    names. UserError for a pattern that matches nothing."""
    named = list(model.named_parameters())
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in named):
            examples = ", ".join(name for name, _ in named[:4])
            raise UserError(
                f"finetune.freeze: pattern '{pattern}' matches no parameter; parameter names "
                f"look like: {examples} ..."
            )
    matched = {n: p for n, p in named if any(fnmatch.fnmatchcase(n, x) for x in patterns)}
    if len(matched) == len(named):
        raise UserError(
            f"finetune.freeze=[{','.join(patterns)}] freezes every parameter, and a model "
            "with nothing to train cannot take a step; leave the head out (its "
            f"parameters: {named[-1][0].rpartition('.')[0] or named[-1][0]}.*)"
        )
    for parameter in matched.values():
        parameter.requires_grad_(False)
    return list(matched)


def warn_if_frozen_unloaded(frozen: list[str], loaded: list[str], unfreeze_at_epoch: int) -> None:
    """A warning when ``finetune.freeze`` holds tensors that ``init_from`` did not load (a
    stem of another shape, say): they keep their random initial values while frozen."""
    loaded_names = set(loaded)
    unloaded = [name for name in frozen if name not in loaded_names]
    if unloaded:
        until = f"until epoch {unfreeze_at_epoch}" if unfreeze_at_epoch else "for the whole run"
        log.warning(
            f"finetune.freeze holds {len(unloaded)} tensors that init_from did not load, at "
            f"their random initial values {until}: {', '.join(unloaded[:4])}"
            f"{', ...' if len(unloaded) > 4 else ''}; leave them out of finetune.freeze"
        )


def unfreeze(model: nn.Module) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def keep_norm_statistics(model: nn.Module) -> None:
    """Batch-norm layers in evaluation mode while the rest trains: their running mean and
    variance stay those the model started with (what a small data set would only spoil)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def trainable_summary(model: nn.Module) -> str:
    """``"1,234 of 11,690,512 parameters trainable"``: what a fine-tuning run updates."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{trainable:,} of {total:,} parameters trainable"
