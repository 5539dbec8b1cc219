"""New inputs made into model inputs exactly as a run's evaluation made its data.

Each data set leaves a record of how a raw sample becomes what the model saw (the
``preprocessing`` of its ``Splits``), plain data that checkpoints keep:

- ``image``: files of any mode and size, converted to ``channels``, resized (the shorter side
  to ``resize`` and center-cropped to ``size``, or straight to ``size``), pixels times
  ``scale``, then normalized by ``mean`` and ``std`` per channel;
- ``features``: rows of named features (CSV, TSV, JSONL or .npy), standardized;
- ``tokens``: texts split into the run's vocabulary's ids (CSV, TSV, JSONL);
- ``array``: .npy arrays of the model's input shape, standardized per channel.

``list_inputs`` finds the inputs in files of the kind the record says (unread: an image's
path, a table's row); ``prepare`` makes a batch of them into model inputs, and lists the ones
it cannot use with the reason, rather than stopping (unless asked to).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit.errors import UserError

PADDING, UNKNOWN = 0, 1  # token ids; the vocabulary's words start at 2
_WORD = re.compile(r"\w+|[^\w\s]")  # a run of letters/digits, or one punctuation mark

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")


def tokenizer(level: str, lowercase: bool):
    """The function that splits a text into tokens (words and punctuation marks, or
    characters), as a text data set's run did."""

    def tokenize(text: str) -> list[str]:
        text = text.lower() if lowercase else text
        return _WORD.findall(text) if level == "word" else list(text)

    return tokenize


def image_record(
    channels: int,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    scale: float = 1 / 255,
    resize: int | None = None,
) -> dict[str, Any]:
    return {
        "kind": "image",
        "channels": int(channels),
        "size": [int(s) for s in size],
        "resize": resize,
        "scale": float(scale),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def features_record(names: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> dict:
    return {
        "kind": "features",
        "names": [str(n) for n in names],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def array_record(shape: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> dict:
    return {
        "kind": "array",
        "shape": [int(s) for s in shape],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def tokens_record(
    vocabulary: dict[str, int], level: str, lowercase: bool, max_len: int, column: str
) -> dict:
    return {
        "kind": "tokens",
        "vocabulary": dict(vocabulary),
        "level": level,
        "lowercase": bool(lowercase),
        "max_len": int(max_len),
        "column": column,
    }


# --- reading -------------------------------------------------------------------------------


@dataclass
class Sample:
    """One input: where it came from (a path, ``file.csv:3``) and the model's input."""

    source: str
    tensor: torch.Tensor


def list_inputs(paths: Sequence[Path], record: dict[str, Any]) -> list[tuple[str, Any]]:
    """The inputs of ``paths`` (files; folders are searched recursively for the files the
    record's kind reads) as (source, raw input) pairs, not yet decoded: an image file's
    path, a table's row, an array's row."""
    return list(_items(paths, record))


def prepare(
    items: Sequence[tuple[str, Any]],
    record: dict[str, Any],
    on_bad_input: str = "skip",
    bad: list[tuple[str, str]] | None = None,
) -> list[Sample]:
    """``items`` made into model inputs; the ones that cannot be are appended to ``bad``
    with the reason (UserError instead under ``on_bad_input="error"``)."""
    samples = []
    for source, item in items:
        try:
            samples.append(Sample(source, _convert(item, record)))
        except _BadInput as error:
            if on_bad_input == "error":
                raise UserError(f"{source}: {error}; fix or remove it") from None
            if bad is not None:
                bad.append((source, str(error)))
    return samples


class _BadInput(Exception):
    """An input that cannot be made into a model input (the reason, in a few words)."""


def _items(paths: Sequence[Path], record: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for path in paths:
        if path.is_dir():
            suffixes = _suffixes(record)
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
            )
            if not files:
                raise UserError(
                    f"input={path} holds no files this model reads ({', '.join(suffixes)})"
                )
            for file in files:
                yield from _file_items(file, record)
        elif path.is_file():
            yield from _file_items(path, record)
        else:
            raise UserError(f"input={path}: no such file or directory")


def _suffixes(record: dict[str, Any]) -> tuple[str, ...]:
    return {
        "image": (*IMAGE_SUFFIXES, ".npy"),
        "features": (*TABLE_SUFFIXES, ".npy"),
        "tokens": TABLE_SUFFIXES,
        "array": (".npy",),
    }[record["kind"]]


def _file_items(path: Path, record: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix not in _suffixes(record):
        yield (
            str(path),
            _BadInput(
                f"a {suffix or 'suffixless'} file is not an input of this model "
                f"({', '.join(_suffixes(record))})"
            ),
        )
        return
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)  # data, never code
        except (OSError, ValueError) as error:
            yield str(path), _BadInput(f"not a readable .npy array ({error})")
            return
        if array.ndim == len(_sample_shape(record)):  # one sample
            array = array[None]
        for row, sample in enumerate(array):
            yield f"{path}:{row}", sample
        return
    if record["kind"] == "image":
        yield str(path), path
        return
    try:
        rows = _table_rows(path)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
        yield str(path), _BadInput(f"cannot be read as {suffix[1:].upper()} ({error})")
        return
    for number, row in enumerate(rows):
        yield f"{path}:{number}", row


def _sample_shape(record: dict[str, Any]) -> list[int]:
    if record["kind"] == "image":
        return [record["size"][0], record["size"][1]]  # (H, W) grey; (H, W, C) is one too
    if record["kind"] == "features":
        return [len(record["names"])]
    return record.get("shape", [])


def _table_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if not all(isinstance(row, dict) for row in rows):
            raise ValueError("every line must be a JSON object")
        return rows
    csv.field_size_limit(2**31 - 1)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


# --- converting ----------------------------------------------------------------------------


def _convert(item: Any, record: dict[str, Any]) -> torch.Tensor:
    if isinstance(item, _BadInput):
        raise item
    kind = record["kind"]
    if kind == "image":
        return _image(item, record)
    if kind == "features":
        return _features(item, record)
    if kind == "tokens":
        return _tokens(item, record)
    return _array(item, record)


def _normalize(x: torch.Tensor, record: dict[str, Any]) -> torch.Tensor:
    mean, std = _mean_and_std(tuple(record["mean"]), tuple(record["std"]), x.ndim)
    return (x - mean) / std


@functools.lru_cache(maxsize=8)
def _mean_and_std(mean: tuple, std: tuple, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel tensors, made once per record (not once per sample)."""
    shape = [-1] + [1] * (ndim - 1)
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32)
    return as_tensor(mean).view(shape), as_tensor(std).view(shape)


def _image(item: Path | np.ndarray, record: dict[str, Any]) -> torch.Tensor:
    """An image file or an array of pixels (0..255: (H, W), (H, W, C) or (C, H, W)), as
    the run's evaluation transform made its images."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as F

    mode = "L" if record["channels"] == 1 else "RGB"
    if isinstance(item, Path):
        try:
            with Image.open(item) as image:
                image = image.convert(mode)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            raise _BadInput(f"not an image this machine can decode ({error})") from None
        x = F.pil_to_tensor(image)
    else:
        array = np.asarray(item)
        if array.ndim == 3 and array.shape[-1] in (1, 3) and array.shape[0] not in (1, 3):
            array = np.moveaxis(array, -1, 0)  # (H, W, C) -> (C, H, W)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[0] not in (1, 3):
            raise _BadInput(f"an array of shape {tuple(item.shape)} is not an image")
        x = torch.as_tensor(np.ascontiguousarray(array))
        if x.shape[0] != record["channels"]:
            x = x.float().mean(dim=0, keepdim=True) if x.shape[0] == 3 else x.expand(3, -1, -1)
    x = x.float()
    size = record["size"]
    if record["resize"]:
        x = F.center_crop(F.resize(x, record["resize"], antialias=True), size)
    elif list(x.shape[-2:]) != size:
        x = F.resize(x, size, antialias=True)
    return _normalize(x * record["scale"], record)


def _features(item: dict[str, Any] | np.ndarray, record: dict[str, Any]) -> torch.Tensor:
    names = record["names"]
    if isinstance(item, dict):
        missing = [name for name in names if name not in item]
        if missing:
            raise _BadInput(
                f"{len(missing)} of the {len(names)} features missing, first {missing[0]!r}"
            )
        try:
            values = [float(item[name]) for name in names]
        except (TypeError, ValueError):
            bad = next(n for n in names if not _is_number(item[n]))
            raise _BadInput(f"feature {bad!r} is {item[bad]!r}, not a number") from None
    else:
        values = np.asarray(item, dtype=np.float64).reshape(-1).tolist()
        if len(values) != len(names):
            raise _BadInput(f"{len(values)} features; the model takes {len(names)}")
    x = torch.tensor(values, dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise _BadInput("a feature is not a finite number")
    return _normalize(x, record)


def _is_number(value: Any) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _tokens(item: dict[str, Any], record: dict[str, Any]) -> torch.Tensor:
    text = item.get(record["column"])
    if text is None:
        raise _BadInput(f"no column {record['column']!r} (the run's texts were there)")
    tokens = tokenizer(record["level"], record["lowercase"])(str(text))
    if not tokens:
        raise _BadInput("the text is empty")
    ids = [record["vocabulary"].get(token, UNKNOWN) for token in tokens[: record["max_len"]]]
    x = torch.full((record["max_len"],), PADDING, dtype=torch.long)
    x[: len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return x


def _array(item: np.ndarray, record: dict[str, Any]) -> torch.Tensor:
    if list(np.shape(item)) != record["shape"]:
        raise _BadInput(
            f"an array of shape {tuple(np.shape(item))}; the model takes {tuple(record['shape'])}"
        )
    x = torch.as_tensor(np.asarray(item, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise _BadInput("a value is not a finite number")
    return _normalize(x, record)
