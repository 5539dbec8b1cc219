"""A small generated text classification task, written as CSV or JSONL, for tests and recipes.

Each sentence is filler words around one or two keywords of its topic; the label is the
topic. A bag-of-words model can reach 100% test accuracy, so a model that learns anything
at all gets well above chance (1/3).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

TOPICS = {
    "food": ["pizza", "soup", "bread", "cheese", "noodles", "salad"],
    "music": ["guitar", "piano", "drums", "violin", "song", "melody"],
    "sport": ["football", "tennis", "hockey", "rugby", "goal", "match"],
}
FILLER = (
    "the a my our this that some every today yesterday really quite very and then so "
    "we they she he people friends neighbours talked about liked loved watched heard saw "
    "found remembered enjoyed discussed after before during lunch morning evening week"
).split()


def fake_text_rows(n: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (sentence, topic) pairs, topics in turn so that every class has n/3 rows."""
    generator = np.random.default_rng(seed)
    topics = sorted(TOPICS)
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        words = list(generator.choice(FILLER, size=generator.integers(4, 12)))
        for keyword in generator.choice(TOPICS[topic], size=generator.integers(1, 3)):
            words.insert(generator.integers(0, len(words) + 1), keyword)
        sentence = " ".join(words).capitalize() + generator.choice([".", "!", "?"])
        rows.append((sentence, topic))
    return rows


def make_text_csv(path: Path, n: int = 300, seed: int = 0) -> Path:
    """Write ``n`` rows of the task to ``path`` as CSV with columns ``text,label``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(fake_text_rows(n, seed))
    return Path(path)


def make_text_jsonl(path: Path, n: int = 300, seed: int = 0) -> Path:
    """Write ``n`` rows of the task to ``path`` as JSONL: ``{"text": ..., "label": ...}``."""
    with open(path, "w", encoding="utf-8") as handle:
        for text, label in fake_text_rows(n, seed):
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return Path(path)
