"""``trainkit eval``: a checkpoint's model on its run's test split, rebuilt through the
assembly from the config the checkpoint holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from trainkit import checkpoint, config
from trainkit.build import build
from trainkit.errors import UserError
from trainkit.runner import evaluate


def evaluate_checkpoint(
    path: Path, overrides: list[str], output_dir: Path, plugins: list[str]
) -> dict[str, Any]:
    """Rebuild data and model from a checkpoint's config (plus ``overrides``) and test it;
    write summary.json and predictions.csv into ``output_dir`` and return the summary.

    ``plugins``: the modules this command line named (imported already). A checkpoint whose
    run used others is refused: a file never decides what code is imported.
    """
    path = checkpoint.find(path)
    state = checkpoint.load(path)
    cfg = checkpoint.config_of(state, path, plugins)
    for override in overrides:
        key = override.partition("=")[0]
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise UserError(f"unknown key {key}: the checkpoint's config has no such key")
    cfg = config.resolve(OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides)))

    parts = build(cfg, "evaluate")
    checkpoint.load_weights(
        parts.model, state["evaluation_model"], path, f"model {parts.cfg.model.name}"
    )
    metrics = parts.task.metrics(per_class=True).to(parts.device)
    values, outputs = evaluate(
        parts.model,
        parts.loaders["test"],
        parts.loss_fn,
        parts.task,
        metrics,
        parts.device,
        "test",
        keep_outputs=True,
    )
    summary = {"checkpoint": str(path), "epoch": state["epoch"], "step": state["step"], **values}
    parts.task.write_predictions(output_dir / "predictions.csv", outputs)
    checkpoint.save_json(summary, output_dir / "summary.json")
    return summary


_ABSENT = object()
