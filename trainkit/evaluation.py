"""``trainkit eval``: a checkpoint's model on its run's test split, rebuilt through the
assembly from the config the checkpoint holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainkit import checkpoint, config
from trainkit.build import build
from trainkit.errors import UserError
from trainkit.runner import evaluate


@dataclass
class Checked:
    """A checkpoint read and checked for evaluation: its file, its state, and the config to
    test it with (its own, with the command line's overrides)."""

    path: Path
    state: dict[str, Any]
    cfg: DictConfig


def check_checkpoint(path: Path, overrides: list[str], plugins: list[str]) -> Checked:
    """Read the checkpoint at ``path`` (a file or a run directory) and its config with
    ``overrides``, reading no data: UserError for a damaged checkpoint, an unknown key, or
    a run that used plugins other than ``plugins`` (the modules this command line named,
    imported already): a file never decides what code is imported."""
    path = checkpoint.find(path)
    state = checkpoint.load(path)
    cfg = checkpoint.config_of(state, path, plugins)
    other_data = any(o.startswith(("data.root=", "data.path=")) for o in overrides)
    for override in overrides:
        key = override.partition("=")[0]
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise UserError(f"unknown key {key}: the checkpoint's config has no such key")
        if key in ("resume", "init_from") or key.startswith(_TRAINING_ONLY):
            raise UserError(
                f"{override}: eval tests the checkpoint's model as it was trained, and "
                f"{key} only changes training; leave it out"
            )
        if key in _SPLIT_KEYS and not other_data:
            raise UserError(
                f"{override}: the run's test split would be cut anew, and take in samples the "
                "model trained on; eval tests on its run's own split (other data: data.root=...)"
            )
        if isinstance(OmegaConf.select(cfg, key), DictConfig):  # optimizer=adamw: a group
            raise UserError(
                f"{override}: eval tests the checkpoint's model as it was trained, and changes "
                f"keys of its config (data.batch_size=256), not its components"
            )
    return Checked(
        path, state, config.resolve(OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides)))
    )


def evaluate_checkpoint(
    path: Path | Checked, overrides: list[str], output_dir: Path, plugins: list[str]
) -> dict[str, Any]:
    """Rebuild data and model from a checkpoint's config (plus ``overrides``) and test it;
    write summary.json and predictions.csv into ``output_dir`` and return the summary.
    ``path`` may be what ``check_checkpoint`` returned already (``overrides`` and
    ``plugins`` are then its)."""
    checked = path if isinstance(path, Checked) else check_checkpoint(path, overrides, plugins)
    path, state, cfg = checked.path, checked.state, checked.cfg

    parts = build(cfg, "evaluate")
    checkpoint.load_weights(
        parts.model, state["evaluation_model"], path, f"model {parts.cfg.model.name}"
    )
    metrics = parts.task.metrics(per_class=True).to(parts.device)
    try:
        values, outputs = evaluate(
            parts.model,
            parts.loaders["test"],
            parts.loss_fn,
            parts.task,
            metrics,
            parts.device,
            "test",
            keep_outputs=True,
            speed=parts.speed,  # the run's precision: a bf16 run's test was in bf16
        )
    finally:
        parts.close()
    summary = {"checkpoint": str(path), "epoch": state["epoch"], "step": state["step"], **values}
    parts.task.write_predictions(output_dir / "predictions.csv", outputs)
    checkpoint.save_json(summary, output_dir / "summary.json")
    return summary


_ABSENT = object()
_TRAINING_ONLY = ("optimizer.", "scheduler.", "finetune.")
# What a data set's split is cut by: changed, the test split is another (the same data).
_SPLIT_KEYS = ("data.seed", "data.val_fraction", "data.test_fraction", "data.num_samples")
