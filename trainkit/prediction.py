"""``trainkit predict``: a trained model on new files.

The model is rebuilt through the assembly from the checkpoint's config and its description
of the data (shapes, class names, how a raw input becomes a model input), without the data;
new inputs are made into model inputs exactly as the run's evaluation made its own
(``trainkit.data.preprocess``), and the weights are those validation used (the EMA's, when
the run kept one).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit import checkpoint, config
from trainkit.augment import mirrors
from trainkit.build import build
from trainkit.data import Splits
from trainkit.data.preprocess import check_description, list_inputs, prepare
from trainkit.errors import UserError, first_line
from trainkit.registry import AUGMENTATIONS
from trainkit.reporting import is_terminal
from trainkit.rundir import free_file_name, write_new_file
from trainkit.tasks import MetricLearning

log = logging.getLogger("trainkit")


def predict(
    path: Path,
    inputs: list[Path],
    output: Path | None,
    plugins: list[str],
    topk: int = 5,
    batch_size: int = 256,
    tta: str = "none",
    on_bad_input: str = "skip",
    device: str = "auto",
) -> dict[str, Any]:
    """Write one row per input of ``inputs`` to ``output`` (.csv or .jsonl, a new file;
    None: predictions.csv here, or the next free name), with the model of a checkpoint (on
    ``device``), or of an ONNX file ``trainkit export`` wrote (``path`` ending in .onnx, run
    by onnxruntime); returns what was done (rows written, inputs skipped and why, the file
    written)."""
    if path.suffix.lower() == ".onnx":
        forward, task, description = _from_onnx(path)
        _check_tta(tta, description)
    else:
        forward, task, description = _from_checkpoint(path, plugins, device, tta)
    record = description["preprocessing"]
    if isinstance(task, MetricLearning):  # the embeddings as an array too
        # Checked before anything is written: a refused command leaves no predictions behind.
        planned = output or free_file_name("predictions.csv")
        embeddings = _embeddings_file(planned)
        if embeddings.exists() or embeddings.is_symlink():
            raise UserError(
                f"output={planned}: its embeddings file {embeddings} exists, and trainkit "
                "does not overwrite files; name another output"
            )

    # Decoded a batch at a time (a folder of any size needs a batch's memory), the next batch
    # in a thread while the model runs on this one: decoding and resizing release the GIL.
    items, bad, rows = list_inputs(inputs, record), [], []
    starts = range(0, len(items), batch_size)

    def decode(start: int) -> list:
        return prepare(items[start : start + batch_size], record, on_bad_input, bad)

    with (
        _progress(len(items)) as advance,
        torch.no_grad(),
        ThreadPoolExecutor(max_workers=1) as decoder,
    ):
        upcoming = decoder.submit(decode, 0)
        for start in starts:
            batch = upcoming.result()
            if start + batch_size < len(items):
                upcoming = decoder.submit(decode, start + batch_size)
            advance(min(batch_size, len(items) - start))
            if not batch:
                continue
            x = torch.stack([sample.tensor for sample in batch])
            outputs = forward(x)
            if not torch.isfinite(outputs).all():  # NaN rows would be written without a word
                raise UserError(
                    f"{path}: the model's outputs are not finite numbers (on {batch[0].source} "
                    "and its batch): its weights are damaged, or its run diverged; nothing "
                    "was written"
                )
            if tta == "hflip":
                outputs = _average_with_flipped(forward, x, outputs, task)
            for sample, row in zip(batch, task.predictions(outputs, topk), strict=True):
                rows.append({"input": sample.source, **row})
    if not rows:
        first = f" (first: {bad[0][0]}: {bad[0][1]})" if bad else ""
        raise UserError(f"no input could be read, {len(bad)} tried{first}; nothing written")
    output = _write(rows, output)
    embeddings = None
    if isinstance(task, MetricLearning):
        embeddings = _embeddings_file(output)
        matrix = np.asarray([[row[f"e{i}"] for i in range(len(row) - 1)] for row in rows])
        buffer = io.BytesIO()
        np.save(buffer, matrix.astype(np.float32))
        try:
            write_new_file(embeddings, buffer.getvalue(), "output")
        except UserError:  # made since the check above: the predictions alone are half a result
            output.unlink()
            raise
    return {"rows": len(rows), "skipped": bad, "output": output, "embeddings": embeddings}


def _from_checkpoint(path: Path, plugins: list[str], device: str, tta: str = "none"):
    """The model's forward function (CPU tensors in and out), its task, and the data's
    description, from a checkpoint: through the assembly, without the data. ``tta=hflip``
    is warned about when the run never trained on mirror images."""
    state = checkpoint.load(path)
    description = state.get("data")
    if description:
        check_description(description, f"checkpoint {path}", "use a checkpoint trainkit wrote")
    if not description or not description.get("preprocessing"):
        raise UserError(
            f"checkpoint {path} does not say how its data was prepared (it was saved before "
            "trainkit kept that, or its data set cannot say): predict needs a checkpoint "
            "of a run trained with this version"
        )
    _check_tta(tta, description)
    cfg = config.resolve(checkpoint.config_of(state, path, plugins, device))
    splits = Splits.described(description)
    if tta == "hflip" and splits.image_size:
        trained_on = AUGMENTATIONS.build(cfg.augmentation, image_size=splits.image_size)
        if not mirrors(trained_on):
            log.warning(
                f"warning: tta=hflip averages with mirror images, and the run trained without "
                f"flips (augmentation={cfg.augmentation.name}): a mirror image may look like "
                "another class (a mirrored 6 is no digit); use tta=none unless mirrors keep "
                "their label"
            )
    parts = build(cfg, "evaluate", splits=splits)
    checkpoint.load_weights(
        parts.model, state["evaluation_model"], path, f"model {parts.cfg.model.name}"
    )
    model, device = parts.model.eval(), parts.device

    def forward(x: torch.Tensor) -> torch.Tensor:
        # In float32 whatever the run's precision: the same probabilities on any device (a
        # CPU's bf16 kernels are not a GPU's), as the exported file gives them.
        return model(x.to(device)).float().cpu()

    return forward, parts.task, description


def _check_tta(tta: str, description: dict) -> None:
    kind = description["preprocessing"]["kind"]
    if tta == "hflip" and kind != "image":
        raise UserError(f"tta=hflip flips images; this model reads {kind}")
    if tta == "hflip" and description["target_kind"] == "sequence":
        raise UserError(
            "tta=hflip: this model reads a sequence from left to right, and a mirror image "
            "reverses it (its strings would be averaged with their reversals); leave tta out"
        )


def _from_onnx(path: Path):
    """The same from an ONNX file ``trainkit export`` wrote: run by onnxruntime, its task
    and data's description read from the file's metadata."""
    from trainkit.export import INSTALL_HINT, read_metadata
    from trainkit.registry import TASKS

    if not path.is_file():
        raise UserError(f"model={path}: no such file")
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"model={path} needs onnx and onnxruntime: {INSTALL_HINT}") from None
    meta = read_metadata(path)
    description = meta.get("data") if isinstance(meta, dict) else None
    check_description(description, f"model={path}", "use a file trainkit export wrote")
    if not description.get("preprocessing"):
        raise UserError(
            f"model={path} does not say how its data was prepared (its data set cannot say): "
            "predict needs a model whose run's data set says"
        )
    task = TASKS.build(
        meta["task"], "task", splits=Splits.described(description), loss=meta["loss"]
    )
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # a graph edited or damaged after export
        raise UserError(
            f"model={path} cannot be run by onnxruntime ({first_line(error)})"
        ) from None
    # A graph replaced after export keeps the metadata and may fit it no more.
    named = [each.name for each in session.get_inputs()]
    outputs = session.get_outputs()
    if named != ["input"] or len(outputs) != 1:
        raise UserError(
            f"model={path}: its graph takes {named} and gives {len(outputs)} output(s); a file "
            "trainkit export wrote takes one input named 'input' and gives one output"
        )

    def forward(x: torch.Tensor) -> torch.Tensor:
        try:
            (out,) = session.run(None, {"input": x.numpy()})
        except Exception as error:  # onnxruntime's own types: a shape the graph does not take
            raise UserError(
                f"model={path}: onnxruntime cannot run its graph on {tuple(x.shape)} inputs "
                f"({first_line(error)}); use the file trainkit export wrote"
            ) from None
        if out.shape[-1] != task.head_size:
            raise UserError(
                f"model={path}: its graph gives {out.shape[-1]} outputs per sample, and the "
                f"task its metadata describes needs {task.head_size}; use the file trainkit "
                "export wrote"
            )
        return torch.as_tensor(out).float()

    return forward, task, description


def _average_with_flipped(forward, x: torch.Tensor, outputs: torch.Tensor, task) -> torch.Tensor:
    """Test-time augmentation: the mean of the model's class probabilities (or outputs) on
    the images and on their mirror images, returned as logits of that mean."""
    flipped = forward(torch.flip(x, dims=[-1]))
    if outputs.ndim == 2 and getattr(task, "tracks_accuracy", False):
        mean = (outputs.softmax(dim=1) + flipped.softmax(dim=1)) / 2
        return mean.clamp_min(1e-12).log()
    return (outputs + flipped) / 2


def _embeddings_file(output: Path) -> Path:
    return output.with_name(f"{output.stem}_embeddings.npy")


def _write(rows: list[dict[str, Any]], output: Path | None) -> Path:
    """``rows`` as CSV or JSONL (by ``output``'s suffix), into a file that must be new
    (None: predictions.csv, or the next free name); returns the file written."""
    if output is not None and output.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        buffer = io.StringIO()
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()} for row in rows
        )
        text = buffer.getvalue()
    return write_new_file(
        output or "predictions.csv", text.encode("utf-8"), "output", output is None
    )


class _progress:
    """A progress bar in a terminal for long inputs; nothing elsewhere."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def __enter__(self):
        if is_terminal() and self.total > 1000:
            from rich.progress import Progress

            self.bar = Progress(transient=True, console=None)
            self.bar.start()
            task = self.bar.add_task("predicting", total=self.total)
            return lambda done: self.bar.update(task, advance=done)
        return lambda done: None

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def report_skipped(skipped: list[tuple[str, str]], limit: int = 10) -> None:
    """The inputs left out, each once with the reason (on stderr: they are not results)."""
    if not skipped:
        return
    print(f"skipped {len(skipped)} inputs that could not be used:", file=sys.stderr)
    for source, reason in skipped[:limit]:
        print(f"  {source}: {reason}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more", file=sys.stderr)
