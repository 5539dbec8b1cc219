"""Saving and loading checkpoints: atomic writes, and loads that never run code."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainkit.errors import UserError


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
    except OSError as error:
        kept = "the previous checkpoint is intact" if path.exists() else "nothing was written"
        raise UserError(
            f"cannot write checkpoint {path} ({error.strerror or error}); {kept}"
        ) from None


def write_text_atomically(text: str, path: str | Path) -> None:
    """Replace a text file in one step (see ``_write_atomically``)."""
    _write_atomically(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def save_json(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2) + "\n"
    _write_atomically(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def find(path: str | Path, name: str = "best.pt") -> Path:
    """The checkpoint file meant by ``path``: the file itself, or a run directory's ``name``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / name if (path / "checkpoints").is_dir() else path / name
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint as data only (``weights_only=True``); UserError if unreadable."""
    path = find(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"checkpoint {path} is truncated or corrupt ({reason})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"checkpoint {path} is not a trainkit checkpoint (no model or config)")
    return state
