"""``trainkit export``: a checkpoint's model as a file that serving code runs without
trainkit: ONNX (through torch.onnx, with the ``export`` extra) or torch.export's program
(``.pt2``). The batch dimension stays dynamic; the class names, the task and how a raw
input becomes a model input travel inside the file. Every export is checked against the
PyTorch model on a batch of the run's test inputs before it is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from trainkit import __version__, checkpoint, config
from trainkit.build import build
from trainkit.data import Splits
from trainkit.data.preprocess import check_description
from trainkit.errors import UserError, first_line
from trainkit.rundir import write_new_file

METADATA_KEY = "trainkit"  # the ONNX metadata property, and the .pt2 extra file's stem
INSTALL_HINT = "pip install 'trainkit[export]'"


def export_checkpoint(
    path: Path, fmt: str, output: Path | None, plugins: list[str], opset: int | None = None
) -> dict[str, Any]:
    """Write the checkpoint's model (its evaluation weights) to ``output`` in ``fmt``
    (``onnx`` or ``torch_export``; None: model.onnx or model.pt2 here, or the next free
    name); returns the parity check's figures and the file written. UserError when the
    model cannot be exported (naming what stopped it) or the export differs from it."""
    state = checkpoint.load(path)
    description = state.get("data")
    if not description:
        raise UserError(
            f"checkpoint {path} does not describe its data (it was saved before trainkit kept "
            "that): export needs a checkpoint of a run trained with this version"
        )
    check_description(description, f"checkpoint {path}", "use a checkpoint trainkit wrote")
    # On the CPU: the file holds no GPU tensors, and onnxruntime checks it there.
    cfg = config.resolve(checkpoint.config_of(state, path, plugins, device="cpu"))
    parts = build(cfg, "evaluate", splits=Splits.described(description))
    model = parts.model.eval()
    checkpoint.load_weights(model, state["evaluation_model"], path, f"model {cfg.model.name}")
    inputs, where = _test_batch(cfg, description)
    metadata = json.dumps(
        {
            "trainkit": __version__,
            "task": config.to_container(cfg)["task"],
            "loss": config.to_container(cfg)["loss"],
            "data": description,
            "input": {"name": "input", "dtype": str(inputs.dtype).removeprefix("torch.")},
        }
    )
    with torch.no_grad():
        expected = model(inputs).float()
    if not torch.isfinite(expected).all():  # (no tolerance can be said of NaN)
        raise UserError(
            f"checkpoint {path}: its model's outputs on {where} are not finite numbers (its "
            "weights are damaged, or its run diverged); nothing was written"
        )
    if fmt == "onnx":
        data, got = _onnx(model, inputs, metadata, opset, cfg.model.name)
    else:
        data, got = _torch_export(model, inputs, metadata, cfg.model.name)
    difference = (got - expected).abs().max().item()
    tolerance = 1e-4 + 1e-3 * expected.abs().max().item()
    if not difference <= tolerance:
        raise UserError(
            f"the exported model differs from the PyTorch model by {difference:.3g} on {where} "
            f"(at most {tolerance:.3g} allowed); nothing was written"
        )
    default = "model.onnx" if fmt == "onnx" else "model.pt2"
    written = write_new_file(output or default, data, "output", output is None)
    return {"difference": difference, "tolerance": tolerance, "inputs": where, "output": written}


def _test_batch(cfg, description: dict) -> tuple[torch.Tensor, str]:
    """Up to 8 of the run's test inputs; random ones of the right shape where the run's
    data is not here (a downloaded checkpoint), said so."""
    try:
        parts = build(cfg, "evaluate")
        try:
            inputs, _, _ = next(iter(parts.loaders["test"]))
        finally:
            parts.close()
        return inputs[:8].cpu(), f"{len(inputs[:8])} of the run's test inputs"
    except (UserError, StopIteration) as error:
        reason = f" ({error})" if str(error) else ""
        shape = description["input_shape"]
        generator = torch.Generator().manual_seed(0)
        if description.get("vocab_size"):
            inputs = torch.randint(0, description["vocab_size"], (4, *shape), generator=generator)
        else:
            inputs = torch.randn(4, *shape, generator=generator)
        return inputs, f"4 random inputs: the run's data is not here{reason}"


def _onnx(model, inputs, metadata: str, opset: int | None, name: str):
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (what torch.onnx's exporter needs)
    except ImportError:
        raise UserError(
            f"format=onnx needs onnx, onnxscript and onnxruntime: {INSTALL_HINT}"
        ) from None
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_torch():
            program = torch.onnx.export(
                model,
                (inputs,),
                dynamo=True,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                verbose=False,
            )
    except Exception as error:
        raise UserError(f"model {name} cannot be exported to ONNX: {_reason(error)}") from None
    wrote = next(o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and wrote != opset:
        # torch's exporter writes its own opset and converts it, warning (hidden here) when
        # it cannot: a file of another opset than asked for is not what the user serves.
        raise UserError(
            f"opset={opset}: torch's ONNX exporter could not write model {name} in opset "
            f"{opset} (it wrote {wrote}); use opset={wrote}, or leave opset out"
        )
    program.model.metadata_props[METADATA_KEY] = metadata
    data = program.model_proto.SerializeToString()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": inputs.numpy()})
    return data, torch.as_tensor(got).float()


def _torch_export(model, inputs, metadata: str, name: str):
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_torch():
            program = torch.export.export(model, (inputs,), dynamic_shapes=({0: batch},))
    except Exception as error:
        raise UserError(
            f"model {name} cannot be exported with torch.export: {_reason(error)}"
        ) from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={f"{METADATA_KEY}.json": metadata})
    with torch.no_grad():
        got = program.module()(inputs).float()
    return buffer.getvalue(), got


def _reason(error: BaseException) -> str:
    """What stopped an export, in one line: the message's first line and, where the
    exporter says, the line of the model's code it was at (file, line, function, code)."""
    while error.__cause__ is not None:  # torch.onnx wraps what torch.export said
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # no terminal colours in our line
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    first = lines[0].strip() if lines else type(error).__name__
    where = ""
    for number, line in enumerate(lines):
        found = re.match(r'\s*File "(.+)", line (\d+), in (\S+)', line)
        if found:
            code = lines[number + 1].strip() if number + 1 < len(lines) else ""
            name = Path(found.group(1)).name
            where = f" (at {name}:{found.group(2)} in {found.group(3)}: {code})"
    return f"{first}{where}"[:500]


@contextlib.contextmanager
def _quiet_torch():
    """torch's exporters log pages of diagnostics when they fail: the user gets one line."""
    loggers = [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.split(".")[0] == "torch" and isinstance(logger, logging.Logger)
    ]
    disabled = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)  # (some of it is written straight to the descriptor)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        for logger, was in zip(loggers, disabled, strict=True):
            logger.disabled = was


def read_metadata(path: Path) -> dict[str, Any]:
    """The trainkit metadata of an exported ONNX file (what ``predict model=`` needs)."""
    import onnx

    not_ours = f"model={path} is not an ONNX file that trainkit export wrote"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # (protobuf's DecodeError, among others): damaged, or not ONNX
        raise UserError(f"{not_ours} (it cannot be read as ONNX: {first_line(error)})") from None
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                meta = json.loads(prop.value)
            except ValueError:
                meta = None
            if not (
                isinstance(meta, dict)
                and isinstance(meta.get("task"), dict)
                and isinstance(meta.get("loss"), dict)
            ):
                raise UserError(f"{not_ours} (its trainkit metadata is damaged)")
            return meta
    raise UserError(f"{not_ours} (no metadata)")
