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

import codecs
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
    vocabulary: dict[str, int],
    level: str,
    lowercase: bool,
    max_len: int,
    column: str,
    encoding: str = "utf-8",
) -> dict:
    return {
        "kind": "tokens",
        "vocabulary": dict(vocabulary),
        "level": level,
        "lowercase": bool(lowercase),
        "max_len": int(max_len),
        "column": column,
        "encoding": encoding,  # of the run's text files, and so of those predict reads
    }


def check_description(description: Any, named: str, remedy: str) -> None:
    """Raise UserError ``NAMED: its data description is damaged (what); REMEDY`` unless
    ``description`` (a ``Splits.description()`` as a checkpoint or an exported model keeps
    it) is one trainkit could have written: the types, a known kind of preprocessing with
    its keys, and sizes that agree with each other and with the model's input."""
    problem = _description_problem(description)
    if problem:
        raise UserError(f"{named}: its data description is damaged ({problem}); {remedy}")


def _description_problem(description: Any) -> str | None:
    if not isinstance(description, dict):
        return f"a {type(description).__name__}, not a mapping"
    num_classes, shape = description.get("num_classes"), description.get("input_shape")
    names = description.get("class_names")
    if not _whole(num_classes):
        return f"num_classes={num_classes!r}"
    if not (isinstance(shape, list) and shape and all(_whole(n) for n in shape)):
        return f"input_shape={shape!r}"
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return f"class_names={names!r}"
    if names and len(names) != num_classes:
        return f"{len(names)} class_names for num_classes={num_classes}"
    if description.get("target_kind") not in ("class", "continuous", "sequence"):
        return f"target_kind={description.get('target_kind')!r}"
    if description.get("vocab_size") is not None and not _whole(description["vocab_size"]):
        return f"vocab_size={description['vocab_size']!r}"
    record = description.get("preprocessing")
    if record is None:  # a data set that cannot say: predict refuses it, export needs none
        return None
    if not isinstance(record, dict):
        return f"preprocessing is a {type(record).__name__}, not a mapping"
    return _record_problem(record, shape)


_RECORD_KEYS = {
    "image": ("channels", "size", "resize", "scale", "mean", "std"),
    "features": ("names", "mean", "std"),
    "array": ("shape", "mean", "std"),
    "tokens": ("vocabulary", "level", "lowercase", "max_len", "column"),
}


def _record_problem(record: dict[str, Any], shape: list[int]) -> str | None:
    kind = record.get("kind")
    if kind not in _RECORD_KEYS:
        return f"preprocessing kind {kind!r}, not one of {', '.join(_RECORD_KEYS)}"
    missing = [key for key in _RECORD_KEYS[kind] if key not in record]
    if missing:
        return f"{kind} preprocessing without {', '.join(missing)}"
    if kind == "tokens":
        vocabulary = record["vocabulary"]
        if not (isinstance(vocabulary, dict) and all(_whole(i) for i in vocabulary.values())):
            return "a vocabulary that does not map words to ids"
        if record["level"] not in ("word", "char") or not isinstance(record["column"], str):
            return f"level={record['level']!r}, column={record['column']!r}"
        if not _whole(record["max_len"]) or shape != [record["max_len"]]:
            return f"max_len={record['max_len']!r} for input_shape={shape}"
        if not _known_encoding(record.get("encoding", "utf-8")):  # (absent before 2026-11-30)
            return f"encoding={record['encoding']!r}"
        return None
    mean, std = record["mean"], record["std"]
    if not all(isinstance(v, list) and all(_number(x) for x in v) for v in (mean, std)):
        return "mean and std are not lists of numbers"
    if not all(x > 0 for x in std):
        return "a std that is not above 0"
    if kind == "image":
        channels, size, resize = record["channels"], record["size"], record["resize"]
        if channels not in (1, 3) or isinstance(channels, bool):
            return f"channels={channels!r}, not 1 or 3"
        if not (isinstance(size, list) and len(size) == 2 and all(_whole(n) for n in size)):
            return f"size={size!r}, not two sizes above 0"
        if resize is not None and not _whole(resize) or not _number(record["scale"]):
            return f"resize={resize!r}, scale={record['scale']!r}"
        expected = [channels, *size]
    elif kind == "features":
        names = record["names"]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            return "feature names that are not a list of names"
        expected = [len(names)]
    else:
        expected = record["shape"]
        if not (isinstance(expected, list) and all(_whole(n) for n in expected)):
            return f"shape={expected!r}"
    if expected != shape:
        return f"{kind} inputs of shape {tuple(expected)}; input_shape is {tuple(shape)}"
    if not len(mean) == len(std) == expected[0]:
        return f"{len(mean)} means and {len(std)} stds for {expected[0]} channels"
    return None


def _whole(value: Any) -> bool:
    """A whole number above 0 (not a bool, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or np.isfinite(value)  # an int of any size is finite


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
        if array.dtype.kind not in "biuf":  # numpy would drop an imaginary part silently
            yield str(path), _BadInput(f"an array of {array.dtype} values, not real numbers")
            return
        if record["kind"] == "image":
            array = _images_of(array, record)
            if isinstance(array, _BadInput):
                yield str(path), array
                return
        elif array.ndim == len(_sample_shape(record)):  # one sample
            array = array[None]
        elif array.ndim == 0:  # a single number: no rows to go through
            shape = tuple(_sample_shape(record))
            yield (
                str(path),
                _BadInput(f"an array of shape (); this model's samples have shape {shape}"),
            )
            return
        for row, sample in enumerate(array):
            yield f"{path}:{row}", sample
        return
    if record["kind"] == "image":
        yield str(path), path
        return
    try:
        rows = _table_rows(path, record.get("encoding", "utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
        yield str(path), _BadInput(f"cannot be read as {suffix[1:].upper()} ({error})")
        return
    for number, row in enumerate(rows):
        yield f"{path}:{number}", row


def _images_of(array: np.ndarray, record: dict[str, Any]) -> np.ndarray | _BadInput:
    """An .npy file's images as an (N, C, H, W) view: one image as the model takes it,
    (C, H, W), or as (H, W, C), or (H, W) for one channel; or a stack of them along a
    leading axis. Its height, width and channels must be the model's, or which axis is
    which would be a guess (a (3, 8, 8) array: one colour image or three grey ones?)."""
    channels, (height, width) = record["channels"], record["size"]
    one = [("C", "H", "W"), ("H", "W", "C")] + ([("H", "W")] if channels == 1 else [])
    sizes = {"C": channels, "H": height, "W": width}
    views, layouts = {}, []
    for layout in [*one, *(("N", *axes) for axes in one)]:
        if len(layout) != array.ndim or any(
            axis != "N" and length != sizes[axis]
            for axis, length in zip(layout, array.shape, strict=True)
        ):
            continue
        view, axes = array, layout
        for axis in ("N", "C"):
            if axis not in axes:
                view, axes = view[None], (axis, *axes)
        view = view.transpose([axes.index(axis) for axis in "NCHW"])
        # Layouts that agree on every pixel (a grey (1, H, W): one image, or a stack of
        # one) are one reading; those that do not are a guess this refuses to make.
        strides = tuple(s for s, n in zip(view.strides, view.shape, strict=True) if n > 1)
        views.setdefault((view.shape, strides), view)
        layouts.append(", ".join(layout))
    if len(views) == 1:
        return next(iter(views.values()))
    accepted = [f"({', '.join(str(sizes[axis]) for axis in axes)})" for axes in one]
    if not views:
        return _BadInput(
            f"an array of shape {tuple(array.shape)}; this model's images are "
            f"{', '.join(accepted[:-1])} or {accepted[-1]}, or a stack of them along a first axis"
        )
    return _BadInput(
        f"an array of shape {tuple(array.shape)} reads as ({') or ('.join(layouts)}), "
        "which give different images"
    )


def _sample_shape(record: dict[str, Any]) -> list[int]:
    if record["kind"] == "features":
        return [len(record["names"])]
    return record.get("shape", [])


def _known_encoding(encoding: Any) -> bool:
    try:
        return isinstance(encoding, str) and bool(codecs.lookup(encoding))
    except LookupError:
        return False


def _table_rows(path: Path, encoding: str = "utf-8") -> list[dict[str, Any]]:
    """A CSV, TSV or JSONL file's rows, read as ``encoding`` (UTF-8 with or without a BOM)."""
    utf8 = codecs.lookup(encoding).name == "utf-8"
    text = path.read_text(encoding="utf-8-sig" if utf8 else encoding)
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:  # its own "line 1" is within the line
                raise ValueError(f"line {number} is not JSON ({error.msg})") from None
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


def convert_image(image, mode: str):
    """A PIL ``image`` in ``mode`` ("L" or "RGB"), as 8-bit pixels.

    PIL's own conversion clips grey images of more than 8 bits at 255 (a 16-bit photograph
    comes out white), so those are scaled first: ``I;16`` by its range (value / 257, 0..65535
    onto 0..255); ``I`` (32-bit integers) the same when every value fits 0..65535 (older
    Pillows open 16-bit PNGs as ``I``), and ``F`` (32-bit floats) as value x 255 when every
    value fits 0..1 (the usual range of float images); otherwise by the image's own minimum
    and maximum (a flat image is black). Raises ValueError for a non-finite pixel.
    """
    from PIL import Image

    if image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64) / 257
    elif image.mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise ValueError("a pixel is not a finite number")
        low, high = (pixels.min(), pixels.max()) if pixels.size else (0, 0)
        if image.mode == "I" and low >= 0 and high <= 65535:
            pixels = pixels / 257
        elif image.mode == "F" and low >= 0 and high <= 1:
            pixels = pixels * 255
        else:
            pixels = (pixels - low) * (255 / (high - low) if high > low else 0)
    else:
        return image.convert(mode)
    grey = Image.fromarray(np.round(pixels).clip(0, 255).astype(np.uint8), mode="L")
    return grey.convert(mode)


def _image(item: Path | np.ndarray, record: dict[str, Any]) -> torch.Tensor:
    """An image file, or an array of pixels laid out (C, H, W) as the model takes it
    (``_images_of``), as the run's evaluation transform made its images. An array's pixels
    are 0..255 as image files' are, whatever its type; float arrays whose every value fits
    0..1 are read as float images are (value x 255)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as F

    mode = "L" if record["channels"] == 1 else "RGB"
    if isinstance(item, Path):
        try:
            with Image.open(item) as image:
                image = convert_image(image, mode)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            raise _BadInput(f"not an image this machine can decode ({error})") from None
        x = F.pil_to_tensor(image)
    else:
        with np.errstate(over="ignore"):  # beyond float32's range: inf, refused just below
            x = torch.as_tensor(np.asarray(item, dtype=np.float32))
        if not torch.isfinite(x).all():
            raise _BadInput("a pixel is not a finite number")
        if x.numel() and (x.min() < 0 or x.max() > 255):  # an image file's pixels cannot be
            low, high = x.min().item(), x.max().item()
            raise _BadInput(f"pixels from {low:g} to {high:g}; an image's are 0..255 (or 0..1)")
        if np.asarray(item).dtype.kind == "f" and x.numel() and x.max() <= 1:
            x = x * 255
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
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused just below
        x = torch.as_tensor(np.asarray(item, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise _BadInput("a value is not a finite number")
    return _normalize(x, record)
