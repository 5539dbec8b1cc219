"""Text classification data from CSV or JSONL files.

Each row holds a text and a label. Texts become fixed-length rows of token ids (padding 0,
unknown 1) over a vocabulary built from the train split only, so a word seen only in val or
test counts as unknown, as it would for new text after training.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from trainkit.data.preprocess import PADDING, UNKNOWN, tokenizer, tokens_record
from trainkit.data.splits import Splits, TensorSplit, stratified_split
from trainkit.errors import UserError
from trainkit.registry import DATASETS, PositiveInt, Probability

_INTEGER = re.compile(r"-?\d+")


@DATASETS.register("text_csv")
def text_csv(
    path: str,
    val_path: str | None = None,
    test_path: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    level: Literal["word", "char"] = "word",
    lowercase: bool = True,
    max_len: PositiveInt = 64,
    min_freq: PositiveInt = 1,
    max_vocab: PositiveInt | None = None,
    val_fraction: Probability = 0.15,
    test_fraction: Probability = 0.15,
    seed: int = 0,
    encoding: str = "utf-8",
) -> Splits:
    """Texts and labels from a .csv, .tsv or .jsonl file; inputs are LongTensors (max_len,).

    ``val_path``/``test_path`` give those splits their own files; a split without one is
    carved from ``path``, stratified and seeded, with ``val_fraction``/``test_fraction``.
    Labels map to class indices in sorted order (numeric order when all are integers).
    A sample's index is its row number (from 0) in the file it came from.
    Raises UserError for a missing or empty file, a missing column, or a val/test label
    that the train split lacks.
    """
    try:
        "".encode(encoding)
    except LookupError:
        raise UserError(f"data.encoding={encoding!r} is not an encoding Python knows") from None
    texts, labels = _read(path, "data.path", text_column, label_column, encoding)
    # A split with a file of its own is not carved from `path`.
    carved_val = 0.0 if val_path else val_fraction
    carved_test = 0.0 if test_path else test_fraction
    _, label_ids = np.unique(labels, return_inverse=True)
    carved = stratified_split(label_ids, carved_val, carved_test, seed)
    # split name -> (texts, labels, row numbers, where they come from: for errors)
    splits = {
        split_name: ([texts[i] for i in rows], [labels[i] for i in rows], rows, f"data.path={path}")
        for split_name, rows in zip(("train", "val", "test"), carved, strict=True)
    }
    for split_name, split_path in (("val", val_path), ("test", test_path)):
        if split_path:
            key = f"data.{split_name}_path"
            split_texts, split_labels = _read(split_path, key, text_column, label_column, encoding)
            rows = np.arange(len(split_labels))
            splits[split_name] = (split_texts, split_labels, rows, f"{key}={split_path}")

    train_texts, train_labels, _, _ = splits["train"]
    class_names = _sorted_labels(set(train_labels))
    if len(class_names) < 2:
        raise UserError(
            f"data.path={path}: the train split has one label ({class_names[0]!r}) in "
            f"column '{label_column}'; classification needs at least 2"
        )
    class_index = {name: i for i, name in enumerate(class_names)}
    tokenize = tokenizer(level, lowercase)
    vocabulary = _vocabulary((tokenize(text) for text in train_texts), min_freq, max_vocab)

    def encode(split_name: str) -> TensorSplit:
        split_texts, split_labels, indices, source = splits[split_name]
        unseen = sorted(set(split_labels) - set(class_index))
        if unseen:
            raise UserError(
                f"{source}: label {unseen[0]!r} is not in the train split, "
                f"whose labels are: {', '.join(class_names)}"
            )
        tokens = torch.full((len(split_texts), max_len), PADDING, dtype=torch.long)
        for row, text in enumerate(split_texts):
            ids = [vocabulary.get(token, UNKNOWN) for token in tokenize(text)[:max_len]]
            tokens[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        targets = torch.as_tensor([class_index[label] for label in split_labels], dtype=torch.long)
        return TensorSplit(tokens, targets, torch.as_tensor(indices, dtype=torch.long))

    return Splits(
        encode("train"),
        encode("val"),
        encode("test"),
        num_classes=len(class_names),
        input_shape=(max_len,),
        class_names=class_names,
        vocab_size=len(vocabulary) + 2,
        preprocessing=tokens_record(vocabulary, level, lowercase, max_len, text_column, encoding),
    )


# --- reading files -------------------------------------------------------------------------


def _read(
    path: str, key: str, text_column: str, label_column: str, encoding: str
) -> tuple[list, list]:
    """The texts and labels (as strings) of one file; ``key`` names it in errors."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(f"{key}={path} is a folder; name the CSV, TSV or JSONL file in it")
    if not file.is_file():
        raise UserError(f"{key}={path}: no such file")
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise UserError(f"{key}={path}: unknown file type {suffix!r}; use .csv, .tsv or .jsonl")
    text = _decode(file, key, path, encoding)
    if suffix == ".jsonl":
        rows, columns = _read_jsonl(text, key, path)
    else:
        rows, columns = _read_csv(text, "\t" if suffix == ".tsv" else ",", key, path)
    if not rows:
        raise UserError(f"{key}={path} is empty: it has no rows")
    for option, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in columns:
            raise UserError(
                f"data.{option}={column!r} is not a column of {path}; "
                f"its columns are: {', '.join(columns)}"
            )
    texts, labels = [], []
    for number, row in enumerate(rows):
        text, label = row.get(text_column), row.get(label_column)
        if label is None or label == "":
            raise UserError(f"{key}={path}: row {number} has no value in column '{label_column}'")
        texts.append("" if text is None else str(text))
        labels.append(str(label))
    return texts, labels


def _decode(file: Path, key: str, path: str, encoding: str) -> str:
    """The whole file as text; UserError naming the byte that is not ``encoding``."""
    data = file.read_bytes()
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) must not become part of a name.
        return data.decode(
            "utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding
        )
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(
            f"{key}={path} is not {encoding} text: byte 0x{data[error.start]:02x} at offset "
            f"{error.start} (line {line}); save it as UTF-8, or set data.encoding to its "
            "encoding (latin-1, cp1252, ...)"
        ) from None


def _read_csv(text: str, delimiter: str, key: str, path: str) -> tuple[list[dict], list[str]]:
    # Python's csv refuses fields over 128 KiB by default; a long review is not a mistake.
    csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = list(reader)
    except csv.Error as error:
        raise UserError(
            f"{key}={path}: line {reader.line_num} is not valid CSV ({error})"
        ) from None
    return rows, list(reader.fieldnames or [])


def _read_jsonl(text: str, key: str, path: str) -> tuple[list[dict], list[str]]:
    rows, columns = [], {}  # a dict keeps the keys in the order they first appear
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{key}={path}: line {number} is not JSON ({error})") from None
        if not isinstance(row, dict):
            raise UserError(f"{key}={path}: line {number} is not a JSON object")
        rows.append(row)
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


# --- labels and tokens ---------------------------------------------------------------------


def _sorted_labels(labels: set[str]) -> list[str]:
    """Sorted, numerically when every label is an integer (so "10" comes after "9")."""
    if all(_INTEGER.fullmatch(label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _vocabulary(token_lists, min_freq: int, max_vocab: int | None) -> dict[str, int]:
    """Token -> id for tokens seen ``min_freq`` times, most frequent first, ids from 2."""
    counts = Counter(token for tokens in token_lists for token in tokens)
    # Ties broken alphabetically, so the same file always gives the same ids.
    kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
    return {token: index for index, token in enumerate(kept[:max_vocab], start=2)}
