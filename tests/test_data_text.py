"""The text_csv data set: reading CSV and JSONL, tokens, vocabulary, labels, splits, errors."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.fake_text import make_text_csv, make_text_jsonl
from trainkit import config
from trainkit.data.text import text_csv
from trainkit.errors import UserError


def write_csv(path, rows, header=("text", "label")):
    lines = [",".join(header), *(",".join(f'"{cell}"' for cell in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def exact_splits(tmp_path, train_rows, test_rows=None, **params):
    """Splits whose train split is exactly ``train_rows`` (val and test from their own files)."""
    train = write_csv(tmp_path / "train.csv", train_rows)
    other = write_csv(tmp_path / "other.csv", test_rows or train_rows)
    return text_csv(train, val_path=other, test_path=other, **params)


# --- reading and splitting -----------------------------------------------------------------


def test_csv_and_jsonl_give_the_same_splits(tmp_path):
    from_csv = text_csv(str(make_text_csv(tmp_path / "fake.csv")))
    from_jsonl = text_csv(str(make_text_jsonl(tmp_path / "fake.jsonl")))
    assert from_csv.class_names == from_jsonl.class_names == ["food", "music", "sport"]
    assert from_csv.num_classes == 3 and from_csv.vocab_size == from_jsonl.vocab_size
    assert from_csv.input_shape == (64,)
    for split in ("train", "val", "test"):
        a, b = getattr(from_csv, split), getattr(from_jsonl, split)
        assert a.inputs.dtype == a.targets.dtype == torch.long
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert torch.equal(a.indices, b.indices)


def test_one_file_is_split_stratified_and_seeded(tmp_path):
    path = str(make_text_csv(tmp_path / "fake.csv", n=300))
    splits = text_csv(path, val_fraction=0.2, test_fraction=0.1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (210, 60, 30)
    every_index = torch.cat([splits.train.indices, splits.val.indices, splits.test.indices])
    assert sorted(every_index.tolist()) == list(range(300))
    assert torch.bincount(splits.test.targets).tolist() == [10, 10, 10]
    again = text_csv(path, val_fraction=0.2, test_fraction=0.1)
    other_seed = text_csv(path, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert torch.equal(splits.test.indices, again.test.indices)
    assert not torch.equal(splits.test.indices, other_seed.test.indices)


def test_a_split_with_its_own_file_is_not_carved_from_path(tmp_path):
    path = str(make_text_csv(tmp_path / "fake.csv", n=300))
    val_path = str(make_text_jsonl(tmp_path / "val.jsonl", n=30, seed=1))
    splits = text_csv(path, val_path=val_path, test_fraction=0.1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (270, 30, 30)
    assert splits.val.indices.tolist() == list(range(30))  # row numbers in its own file


# --- tokens and vocabulary -----------------------------------------------------------------


def test_words_and_punctuation_are_tokens_lowercased_by_default(tmp_path):
    rows = [("Cat, cat!", "a"), ("dog", "b")]
    splits = exact_splits(tmp_path, rows, max_len=6)
    # "cat" twice -> id 2; then ",", "!" and "dog" once each, in alphabetical order.
    assert splits.train.inputs[0].tolist() == [2, 4, 2, 3, 0, 0]
    assert splits.vocab_size == 2 + 4
    cased = exact_splits(tmp_path, rows, max_len=6, lowercase=False)
    # All once: "!", ",", "Cat", "cat", "dog" (capitals sort first).
    assert cased.train.inputs[0].tolist() == [4, 3, 5, 2, 0, 0]


def test_char_level_tokens_include_spaces(tmp_path):
    splits = exact_splits(tmp_path, [("ab a", "x"), ("b", "y")], level="char", max_len=5)
    # a and b twice -> 2, 3; " " once -> 4
    assert splits.train.inputs.tolist() == [[2, 3, 4, 2, 0], [3, 0, 0, 0, 0]]
    assert splits.vocab_size == 5


def test_vocabulary_comes_from_the_train_split_only(tmp_path):
    train = [("the cat sat", "a"), ("the dog ran", "b")]
    test = [("the zebra sat", "a")]
    splits = exact_splits(tmp_path, train, test, max_len=4)
    the, sat = splits.train.inputs[0, 0], splits.train.inputs[0, 2]
    assert splits.test.inputs[0].tolist() == [the, 1, sat, 0]  # zebra is unknown
    assert splits.vocab_size == 2 + 5


def test_long_texts_are_cut_and_short_ones_padded(tmp_path):
    splits = exact_splits(tmp_path, [("a b c d e", "x"), ("a", "y")], max_len=3)
    assert splits.input_shape == (3,)
    assert splits.train.inputs.tolist() == [[2, 3, 4], [2, 0, 0]]


def test_rare_tokens_and_tokens_past_max_vocab_are_unknown(tmp_path):
    rows = [("a a a b b c", "x"), ("a b", "y")]
    rare_c = exact_splits(tmp_path, rows, min_freq=2)
    assert rare_c.train.inputs[0, :6].tolist() == [2, 2, 2, 3, 3, 1]
    assert exact_splits(tmp_path, rows, max_vocab=1).train.inputs[1, :2].tolist() == [2, 1]


# --- labels --------------------------------------------------------------------------------


def test_string_labels_are_classes_in_sorted_order(tmp_path):
    splits = exact_splits(tmp_path, [("x", "pear"), ("y", "apple"), ("z", "fig")])
    assert splits.class_names == ["apple", "fig", "pear"]
    assert splits.train.targets.tolist() == [2, 0, 1]


def test_integer_labels_sort_as_numbers(tmp_path):
    rows = [{"text": "x", "label": 10}, {"text": "y", "label": 2}, {"text": "z", "label": 9}]
    path = write_jsonl(tmp_path / "numbers.jsonl", rows)
    splits = text_csv(path, val_path=path, test_path=path)
    assert splits.class_names == ["2", "9", "10"]
    assert splits.train.targets.tolist() == [2, 0, 1]


def test_columns_are_configurable(tmp_path):
    path = write_csv(tmp_path / "named.csv", [("good", "5"), ("bad", "1")], ("review", "stars"))
    splits = text_csv(
        path, val_path=path, test_path=path, text_column="review", label_column="stars"
    )
    assert splits.class_names == ["1", "5"]


# --- errors --------------------------------------------------------------------------------


def test_missing_file_names_the_key_and_the_path(tmp_path):
    with pytest.raises(UserError, match=r"^data\.path=.*nope\.csv: no such file$"):
        text_csv(str(tmp_path / "nope.csv"))
    path = str(make_text_csv(tmp_path / "fake.csv"))
    with pytest.raises(UserError, match=r"^data\.test_path=.*gone\.jsonl: no such file$"):
        text_csv(path, test_path=str(tmp_path / "gone.jsonl"))


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=r"^data\.path=.*empty\.csv is empty: it has no rows$"):
        text_csv(str(path))


def test_missing_column_names_the_columns_present(tmp_path):
    path = write_csv(tmp_path / "cols.csv", [("hi", "a")], header=("sentence", "label"))
    message = f"data.text_column='text' is not a column of {path}; its columns are: sentence, label"
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        text_csv(path)
    jsonl = write_jsonl(tmp_path / "cols.jsonl", [{"text": "hi", "topic": "a"}])
    with pytest.raises(UserError, match=r"^data\.label_column='label' .* columns are: text, topic"):
        text_csv(jsonl)


def test_label_of_val_or_test_missing_from_train(tmp_path):
    train = write_csv(tmp_path / "train.csv", [("x", "a"), ("y", "b")])
    test = write_csv(tmp_path / "test.csv", [("x", "a"), ("z", "c")])
    message = f"data.test_path={test}: label 'c' is not in the train split, whose labels are: a, b"
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        text_csv(train, val_path=train, test_path=test)


def test_other_file_mistakes(tmp_path):
    text = tmp_path / "data.txt"
    text.write_text("hello\n")
    with pytest.raises(UserError, match=r"unknown file type '\.txt'; use \.csv, \.tsv or \.jsonl"):
        text_csv(str(text))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": "x"}\n{"text": \n')
    with pytest.raises(UserError, match=r"^data\.path=.*broken\.jsonl: line 2 is not JSON"):
        text_csv(str(broken))
    one_label = write_csv(tmp_path / "one.csv", [("x", "a"), ("y", "a")])
    with pytest.raises(UserError, match="the train split has one label .* needs at least 2"):
        text_csv(one_label, val_path=one_label, test_path=one_label)


# --- the YAML file -------------------------------------------------------------------------


def test_config_requires_a_path_and_validates_with_one(tmp_path):
    with pytest.raises(UserError, match=r"^data\.path is required; set it with data\.path=VALUE$"):
        config.validate(config.compose(config.prepare(["data=text_csv"])))
    path = make_text_csv(tmp_path / "fake.csv")
    overrides = ["data=text_csv", f"data.path={path}", "model=text_transformer"]
    config.validate(config.compose(config.prepare(overrides)))
