"""Saving and loading checkpoints: atomic writes, and loads that never run code."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit.errors import UserError, file_system_reason, first_line
from trainkit.registry import plugins_not_named


def _write_atomically(path: Path, write) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, rename it over.

    A crash or a full disk mid-write leaves the previous file at ``path`` intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        # mkstemp makes the file private (0600); give it the permissions of a normal file.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(descriptor, 0o666 & ~umask)
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save(state: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint atomically (see ``_write_atomically``).

    Raises UserError when the file system refuses (a full disk, say): the previous
    checkpoint at ``path`` is then intact.
    """
    path = Path(path)
    try:
        _write_atomically(path, lambda handle: torch.save(state, handle))
    except (OSError, RuntimeError) as error:  # torch wraps the OSError of a full disk
        reason = file_system_reason(error)
        if reason is None:
            raise
        kept = "the previous checkpoint is intact" if path.exists() else "nothing was written"
        raise UserError(f"cannot write checkpoint {path} ({reason}); {kept}") from None


def write_text_atomically(text: str, path: str | Path) -> None:
    """Replace a text file in one step (see ``_write_atomically``)."""
    _write_atomically(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def save_json(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2) + "\n"
    _write_atomically(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def find(path: str | Path, name: str = "best.pt", key: str = "checkpoint") -> Path:
    """The checkpoint file meant by ``path``: the file itself, or a run directory's ``name``;
    ``key`` is the option it was given as (checkpoint, resume, init_from), for the messages."""
    path = Path(path)
    if path.is_dir():
        folder = path
        path = path / "checkpoints" / name if (path / "checkpoints").is_dir() else path / name
        if not path.is_file():
            others = (
                sorted(p.name for p in path.parent.glob("*.pt")) if path.parent.is_dir() else []
            )
            if others:  # (a run stopped before its first validation has last.pt only)
                raise UserError(
                    f"{key}={folder} has no {path.relative_to(folder)} yet; name one it has: "
                    + ", ".join(f"{key}={path.parent / other}" for other in others)
                )
            raise UserError(
                f"{key}={folder} is a folder without {path.relative_to(folder)}: not a run "
                "directory, or one whose run saved none yet; name a run directory or a .pt file"
            )
    if not path.is_file():
        raise UserError(f"{key}={path} does not exist")
    return path


def run_dir_of(path: Path) -> Path:
    """The run directory of a checkpoint file (``RUN/checkpoints/last.pt`` or ``RUN/last.pt``)."""
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint as data only (``weights_only=True``: tensors and plain Python values,
    never code); UserError if it is unreadable or holds anything else."""
    path = find(path)
    state = read(path, f"checkpoint {path}", map_location)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"checkpoint {path} is not a trainkit checkpoint (no model or config)")
    return state


def read(path: Path, named: str, map_location: str | torch.device = "cpu") -> Any:
    """What a torch file holds, loaded as data only; UserError, in which the file is
    ``named``, when it is unreadable or holds anything but tensors and plain values."""
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols: not our line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        if "Weights only load failed" in str(error) and _holds_objects(str(error)):
            raise UserError(
                f"{named} holds objects other than tensors and plain data; trainkit never "
                "runs code from a file, so it does not load it"
            ) from None
        if isinstance(error, MemoryError):
            raise
        if not _looks_like_a_torch_file(path):
            raise UserError(
                f"{named} is not a PyTorch file (a .pt file torch.save wrote)"
            ) from None
        if _is_exported_program(path):
            raise UserError(
                f"{named} is a torch.export program (.pt2), not a checkpoint; give "
                "the run's checkpoints/best.pt (or its folder)"
            ) from None
        raise UserError(f"{named} is truncated or corrupt ({_reason(error)})") from None


def _is_exported_program(path: Path) -> bool:
    """Whether the file is a torch.export archive (``torch.export.save``'s .pt2)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/archive_format") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _looks_like_a_torch_file(path: Path) -> bool:
    """Whether the file starts as torch.save's files do: a zip archive, or (before torch
    1.6) a pickle."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError:
        return True  # unreadable: said as torch said it
    return start.startswith((b"PK\x03\x04", b"\x80"))


def load_matching(module: torch.nn.Module, weights: dict[str, Any]) -> dict[str, list[str]]:
    """Start ``module`` from ``weights`` where they fit: every tensor whose name and shape
    match is loaded; one of another shape (a head for another number of classes) keeps its
    fresh initialization. Returns the names ``loaded``, ``reinitialized`` (another shape)
    and ``left_out`` (the module's tensors the weights lack, and the weights' it lacks)."""
    own = module.state_dict()
    fits = {
        key: value
        for key, value in weights.items()
        if key in own and isinstance(value, torch.Tensor) and value.shape == own[key].shape
    }
    module.load_state_dict(fits, strict=False)
    return {
        "loaded": list(fits),
        "reinitialized": [key for key in own if key in weights and key not in fits],
        "left_out": [key for key in own if key not in weights]
        + [key for key in weights if key not in own],
    }


def _check_trained(state: Any, path: Path) -> None:
    """UserError unless ``state`` has what eval, predict and export read of a checkpoint
    (a file that loads as tensors may still be another program's, or edited)."""
    wrong = None
    if not isinstance(state, dict):
        wrong = f"it holds a {type(state).__name__}, not a checkpoint's dictionary"
    elif not isinstance(state.get("config"), dict):
        wrong = "its config is missing or not a mapping"
    elif not all(isinstance(state["config"].get(k), dict) for k in ("trainer", "model", "data")):
        wrong = "its config lacks trainer, model or data"
    elif not isinstance(state.get("evaluation_model"), dict):
        wrong = "its evaluation_model weights are missing"
    elif not all(isinstance(state.get(k), int) for k in ("epoch", "step")):
        wrong = "its epoch or step is missing"
    if wrong:
        raise UserError(f"checkpoint {path} is not one trainkit wrote, or is damaged: {wrong}")


# The data sets' keys that name files or folders (relative to the working directory).
_DATA_PATHS = ("root", "path", "val_path", "test_path")


def config_of(state: dict[str, Any], path: Path, plugins: list[str], device: str = "auto"):
    """A checkpoint's config, as an OmegaConf config, to run its model on ``device`` (the
    device the run trained on says nothing about this machine: a model trained with
    ``trainer.device=cuda`` is used on laptops too). UserError when its run used plugins
    that ``plugins`` (the modules this command line named) lacks: a file never decides what
    code is imported."""
    from omegaconf import OmegaConf

    _check_trained(state, path)
    cfg = OmegaConf.create(state["config"])
    cfg.trainer.device = device
    # The run read its files relative to its working directory: so does its model, from
    # wherever it is evaluated (a folder of the same name here is not its data).
    trained_in = state.get("cwd")
    data = cfg.get("data")
    if isinstance(trained_in, str) and isinstance(data, Mapping):
        for key in _DATA_PATHS:
            value = data.get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                data[key] = str(Path(trained_in) / value)
    listed = plugins_not_named(cfg.get("plugins"), plugins)
    if listed:
        raise UserError(
            f"checkpoint {path} was trained with plugins={listed}, and trainkit imports only "
            f"the modules named on its command line; add plugins={listed} if you trust them"
        )
    return cfg


def _holds_objects(message: str) -> bool:
    """Whether torch's weights-only unpickler refused a class or function (and not bytes
    that are no pickle at all: "Unsupported operand")."""
    return any(
        words in message
        for words in (
            "Unsupported global",
            "GLOBAL",
            "is blocked",
            "Unsupported class",
            "Can only build",
            "allowlist",
        )
    )


def _reason(error: BaseException) -> str:
    """Why torch could not read a file, without its advice to load it unsafely."""
    message = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    if found:
        return found.group(1).strip()
    if "Weights only load failed" in message:
        return "not a pickle of tensors"
    return first_line(error)


def load_weights(module: torch.nn.Module, weights: dict[str, Any], path: Path, what: str) -> None:
    """``module.load_state_dict(weights)``, or one UserError that names the first key that is
    missing, unexpected or of another shape, and the model the checkpoint holds."""
    own = module.state_dict()
    missing = [key for key in own if key not in weights]
    unexpected = [key for key in weights if key not in own]
    shapes = [
        f"{key} is {tuple(weights[key].shape)} in the checkpoint and {tuple(own[key].shape)} here"
        for key in own
        if key in weights
        and isinstance(weights[key], torch.Tensor)
        and weights[key].shape != own[key].shape
    ]
    problems = []
    if shapes:
        problems.append(shapes[0] + (f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if missing:
        problems.append(f"{len(missing)} tensors are missing, first {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} are not in this model, first {unexpected[0]}")
    if problems:
        raise UserError(f"checkpoint {path} does not fit {what}: {'; '.join(problems)}")
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        raise UserError(f"checkpoint {path} does not fit {what}: {first_line(error)}") from None


# --- what a checkpoint holds besides weights, and which files are kept ---------------------


def rng_state() -> dict[str, Any]:
    """Every random generator's state, in types that ``torch.load(weights_only=True)`` reads."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``'s generators. Its tensors may come on a GPU (a resume loads its
    checkpoint with ``map_location`` the run's device); generators take host copies."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([each.cpu() for each in state["cuda"]])


# The names retention writes, and so may delete again: never a file of another name.


@dataclass
class Ownership:
    """Which checkpoint files a run may write over or remove: those it wrote in this
    invocation, and those its checkpoint lists (``listed``) from before a resume that are
    no newer than the checkpoint it resumed from (whatever a user put or replaced there
    since is newer). Anything else is left as it is."""

    resumed_ns: int | None = None  # the resumed checkpoint's modification time
    written: set[str] = field(default_factory=set)  # names saved in this invocation

    def mine(self, path: Path, listed: bool) -> bool:
        if path.is_symlink():
            return False
        if path.name in self.written:
            return True
        old = self.resumed_ns is not None and path.stat().st_mtime_ns <= self.resumed_ns
        return listed and old

    def free(self, path: Path, listed: bool) -> bool:
        """Whether the run may save ``path``: absent or its own; else it says so."""
        if not (path.exists() or path.is_symlink()) or self.mine(path, listed):
            return True
        message = f"warning: {path} is not this run's checkpoint; left as it is, not saved over"
        logging.getLogger("trainkit").warning(message)  # (reporting's logger; it imports this)
        return False

    def save(self, state: dict[str, Any], path: Path) -> None:
        save(state, path)
        self.written.add(path.name)

    def remove(self, checkpoint_dir: Path, names: list[str]) -> None:
        """Remove the listed checkpoints ``names`` that are still the run's own."""
        for name in names:
            path = checkpoint_dir / name
            if path.exists() and self.mine(path, listed=True):
                path.unlink()


def keep_best(
    state: dict[str, Any],
    checkpoint_dir: Path,
    best_epochs: list[tuple[float, int]],
    new: tuple[float, int],
    keep: int,
    mode: str,
    own: Ownership,
) -> list[tuple[float, int]]:
    """Files ``best_epoch_N.pt`` for the ``keep`` best epochs so far, ``new`` (its monitored
    value and epoch; ``state`` is its checkpoint) among them if it is one; returns them,
    best first (``mode``: "max" or "min"). Only the run's own files (``own``) are written
    over or removed."""
    listed = {f"best_epoch_{epoch:04d}.pt" for _, epoch in best_epochs}
    name = f"best_epoch_{new[1]:04d}.pt"
    if not own.free(checkpoint_dir / name, name in listed):
        return best_epochs
    ranked = sorted([*best_epochs, new], key=lambda pair: -pair[0] if mode == "max" else pair[0])
    ranked = ranked[:keep]
    kept = {f"best_epoch_{epoch:04d}.pt" for _, epoch in ranked}
    if name in kept:
        own.save(state, checkpoint_dir / name)
    own.remove(checkpoint_dir, sorted(listed - kept))
    return ranked


# --- resuming ------------------------------------------------------------------------------

# Keys a resumed run may change: where and how fast it runs, how long, what it logs.
SAFE_TO_CHANGE_ON_RESUME = (
    "resume",
    "trainer.device",
    "trainer.checkpoint_every",
    "trainer.keep_last",
    "trainer.keep_best",
    "trainer.limit_eval_batches",
    "trainer.cudnn_benchmark",
    "data.num_workers",
    "data.pin_memory",
    "data.prefetch_factor",
    "data.on_device",  # like num_workers, it changes which crops and flips are drawn, not how
    "data.eval_batch_size",
    "data.on_bad_image",
    "logger.",
    "plugins",
)


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """UserError with a readable diff if ``current`` trains differently from ``saved``."""
    old, new = _flatten(saved), _flatten(current)
    changed = [
        key
        for key in sorted(old.keys() | new.keys())
        if old.get(key, "<absent>") != new.get(key, "<absent>")
        and not any(
            key == safe or (safe.endswith(".") and key.startswith(safe))
            for safe in SAFE_TO_CHANGE_ON_RESUME
        )
    ]
    if changed:
        diff = "; ".join(
            f"{key}: {old.get(key, '<absent>')} -> {new.get(key, '<absent>')}" for key in changed
        )
        safe = ", ".join(k + ("*" if k.endswith(".") else "") for k in SAFE_TO_CHANGE_ON_RESUME)
        raise UserError(
            f"resume: the config differs from the run's ({diff}); a resumed run may change "
            f"only {safe}: start a new run to change the others"
        )


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}
