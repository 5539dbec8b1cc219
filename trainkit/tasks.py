"""Tasks: what a model's outputs mean, how the loss is applied to them, what is measured.

The data set's targets decide which tasks fit: class labels suit ``classification`` and
``metric_learning``, continuous values ``regression``, label sequences ``sequence``. The
task gives the model its head size, calls the configured loss with the inputs that loss
expects, chooses the metrics and the metric monitored by default, and writes the rows of
predictions.csv. Each loss says which task it belongs to where it is registered
(``trainkit.losses.fits``).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.data import Splits
from trainkit.errors import UserError
from trainkit.losses import fit_of
from trainkit.registry import LOSSES, TASKS, PositiveInt
from trainkit.rundir import write_new_file

if TYPE_CHECKING:
    from trainkit.metrics import (
        ClassificationMetrics,
        EmbeddingMetrics,
        RegressionMetrics,
        SequenceMetrics,
    )

# The task each kind of target suits first (metric learning also takes class labels).
_TASK_FOR_TARGETS = {"class": "classification", "continuous": "regression", "sequence": "sequence"}
_TARGETS = {
    "class": "class labels",
    "continuous": "continuous targets",
    "sequence": "label sequences",
}


# Scores where smaller is better; every other score is better when larger.
LOWER_IS_BETTER = {"loss", "mae", "rmse", "cer"}


def lower_is_better(name: str) -> bool:
    """Whether a logged metric such as ``val/rmse`` improves by going down."""
    return name.rsplit("/", 1)[-1] in LOWER_IS_BETTER


def task_losses(task: str) -> list[str]:
    """The registered losses that declare they belong to ``task``."""
    return [name for name in LOSSES.names() if (fit := fit_of(name)) and fit.task == task]


def logged_metrics(kind: type[Task], scores: Iterable[str], splits: Iterable[str]) -> set[str]:
    """The metrics (``val/acc``) a run of the task ``kind`` logs for ``splits``, its
    evaluations giving ``scores``: training's loss (and running accuracy), the others' loss
    and scores."""
    train = ["loss", "acc"] if kind.tracks_accuracy else ["loss"]
    evaluated = ["loss", *scores]
    return {f"{s}/{name}" for s in splits for name in (train if s == "train" else evaluated)}


def metrics_any_run_reports(task: str, splits: tuple[str, ...]) -> set[str] | None:
    """The metrics (``val/acc``) of ``splits`` that some run of ``task`` reports; None when
    the task does not say (a plugin's)."""
    kind = TASKS.get(task)
    return logged_metrics(kind, kind.scores, splits) if kind.scores else None


def check_task_loss(task: str, loss: str) -> None:
    """Raise UserError if ``loss`` belongs to another task than ``task``.

    A plugin loss that declares no task (``trainkit.losses.fits``), and a task that no loss
    declares (a plugin's), are trusted and pass.
    """
    fit = fit_of(loss) if loss in LOSSES else None
    if fit is None or fit.task == task or not task_losses(task):
        return
    raise UserError(
        f"loss={loss} needs {fit.inputs}, which task={task} does not give; "
        f"task={task} takes {', '.join(task_losses(task))} (loss={loss} belongs to "
        f"task={fit.task})"
    )


class Task:
    """What the runner, the assembly and evaluation ask of a task, and the defaults.

    A task is built from the data's splits and the loss node. The runner calls, in the
    loop: ``compute_loss`` and ``train_hits`` (each batch), ``metrics`` (each validation and
    the test), and at the end ``write_predictions``, ``log_test`` and ``summary_extras``. The
    assembly reads ``head_size`` (the model's outputs), ``default_monitor`` and
    ``score_names`` (what ``trainer.monitor`` may name). A subclass must give ``metrics``,
    ``score_names`` and ``write_predictions``; the rest have defaults.
    """

    name = "task"
    target_kind = "class"  # the kind of targets it needs: "class", "continuous", "sequence"
    default_monitor = "val/loss"
    tracks_accuracy = False  # whether training logs a running train/acc
    # Every score a run of the task can report (``score_names``' possible answers: a run's
    # data decides which, acc_top5 needs 5 classes), so that a misspelt metric is found
    # before any data is read; empty (a plugin's task): not checked before then.
    scores: tuple[str, ...] = ()

    def __init__(self, splits: Splits, loss: Mapping[str, Any]):
        if splits.target_kind != self.target_kind:
            natural = _TASK_FOR_TARGETS.get(splits.target_kind, "?")
            raise UserError(
                f"task={self.name} needs {_TARGETS[self.target_kind]}, but the data set has "
                f"{_TARGETS.get(splits.target_kind, splits.target_kind)}: use task={natural}"
            )
        self.splits, self.loss_name = splits, loss["name"]

    @property
    def head_size(self) -> int:
        """The model's number of outputs (its ``num_classes``)."""
        return self.splits.num_classes

    def compute_loss(self, loss_fn: nn.Module, outputs: torch.Tensor, targets: torch.Tensor):
        """The loss of a batch: ``loss_fn`` called with the inputs it takes."""
        return loss_fn(outputs, targets)

    def metrics(self, per_class: bool = False):
        """A fresh metrics collection (trainkit.metrics) for one split; ``per_class`` adds
        per-class values and the confusion matrix (the test split)."""
        raise NotImplementedError

    def write_predictions(self, path: Path, outputs: Outputs) -> None:
        """predictions.csv of a split: one row per sample, in index order."""
        raise NotImplementedError

    def predictions(self, outputs: torch.Tensor, topk: int = 5) -> list[dict[str, Any]]:
        """What the model says of each new input (``trainkit predict``), one flat dict a
        sample: its ``prediction`` in the data's own terms (a class name, a value in the
        targets' units, a string), and what goes with it (the top-k classes)."""
        raise NotImplementedError

    def score_names(self) -> list[str]:
        """The single-number scores that ``metrics()`` computes besides the loss: what
        ``trainer.monitor`` can name, known before any metric is built.

        ``metrics()`` imports torchmetrics, which imports scipy.signal (about half a second):
        it is built at the first validation, so that training starts without waiting.
        """
        raise NotImplementedError

    def train_hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Correct training predictions in a batch, for the running train/acc."""
        return None

    def summary_extras(self) -> dict[str, Any]:
        """Values summary.json gets besides the metrics (a decision threshold, say)."""
        return {}

    def log_test(self, logger, values: dict[str, Any], outputs: Outputs, step: int) -> None:
        """Extra TensorBoard views of the test split (curves, images)."""


class Outputs:
    """A split's model outputs with the sample indices and targets, on the CPU."""

    def __init__(self, index: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor):
        order = torch.argsort(index)  # predictions.csv lists samples in index order
        self.index, self.targets, self.outputs = index[order], targets[order], outputs[order]


def _write_rows(path: Path, header: list[str], rows) -> None:
    """A new CSV file at ``path``; when a file is there already (a resumed run's folder
    came with one), at the next free name, with a warning: it is not this run's to replace."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    written = write_new_file(path, buffer.getvalue().encode("utf-8"), path.name, True)
    if written != path:
        logging.getLogger("trainkit").warning(
            f"{path.name} was in the run's directory before the run wrote it; it is left as "
            f"it is, and the test predictions are in {written.name}"
        )


# --- classification --------------------------------------------------------------------------


@TASKS.register("classification")
class Classification(Task):
    """One class per sample, from logits (binary or multi-class): the default task.

    With ``loss=bce`` the two logits act as one: BCE is applied to ``z1 - z0``, whose
    sigmoid equals the softmax probability of class 1, so metrics and predictions agree.
    """

    name = "classification"
    default_monitor = "val/acc"
    scores = (
        "acc",
        "balanced_acc",
        "precision",
        "recall",
        "f1",
        "acc_top5",
        "auroc",
        "average_precision",
    )
    tracks_accuracy = True

    def __init__(self, splits: Splits, loss: Mapping[str, Any]):
        super().__init__(splits, loss)
        self.binary_logit = self.loss_name == "bce"
        if self.binary_logit and splits.num_classes != 2:
            raise UserError(
                f"loss=bce takes one logit per sample, for two classes; the data set has "
                f"{splits.num_classes} classes: use loss=cross_entropy"
            )

    def compute_loss(self, loss_fn, outputs, targets):
        if not self.binary_logit:
            return loss_fn(outputs, targets)
        logit = outputs[:, 1] - outputs[:, 0]
        # Mixed targets (mixup, cutmix) come as class probabilities: class 1's is the target.
        target = targets[:, 1] if targets.ndim == 2 else targets.float()
        return loss_fn(logit, target)

    def train_hits(self, outputs, targets):
        return (outputs.argmax(dim=1) == targets).sum()

    def score_names(self) -> list[str]:
        names = ["acc", "balanced_acc", "precision", "recall", "f1"]
        if self.splits.num_classes >= 5:
            names.append("acc_top5")
        if self.splits.num_classes == 2:
            names += ["auroc", "average_precision"]
        return names

    def predictions(self, outputs, topk=5):
        probabilities = outputs.float().softmax(dim=1)
        top = probabilities.topk(min(topk, probabilities.shape[1]), dim=1)
        names = self.splits.class_names or [str(c) for c in range(probabilities.shape[1])]
        rows = []
        for values, classes in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            row: dict[str, Any] = {"prediction": names[classes[0]], "probability": values[0]}
            for rank, (value, index) in enumerate(list(zip(values, classes, strict=True))[1:], 2):
                row[f"top_{rank}"], row[f"probability_{rank}"] = names[index], value
            rows.append(row)
        return rows

    def metrics(self, per_class: bool = False) -> ClassificationMetrics:
        from trainkit.metrics import ClassificationMetrics

        return ClassificationMetrics(self.splits.num_classes, per_class)

    def summary_extras(self) -> dict[str, Any]:
        # `prediction` is the argmax: class 1 exactly when its probability exceeds 0.5.
        return {"decision_threshold": 0.5} if self.splits.num_classes == 2 else {}

    def write_predictions(self, path: Path, outputs: Outputs) -> None:
        """``index,target,prediction,prob_0,...``: one row per sample, in index order."""
        probabilities = outputs.outputs.float().softmax(dim=1)
        predicted = probabilities.argmax(dim=1)
        header = ["index", "target", "prediction"]
        header += [f"prob_{c}" for c in range(probabilities.shape[1])]
        rows = (
            [int(i), int(t), int(p), *(f"{q:.6g}" for q in row)]
            for i, t, p, row in zip(
                outputs.index.tolist(),
                outputs.targets.tolist(),
                predicted.tolist(),
                probabilities.tolist(),
                strict=True,
            )
        )
        _write_rows(path, header, rows)

    def log_test(self, logger, values, outputs, step):
        logger.log_confusion_matrix(
            "test/confusion_matrix", values["test/confusion_matrix"], self.splits.class_names, step
        )
        if self.splits.num_classes == 2:
            probabilities = outputs.outputs.float().softmax(dim=1)[:, 1]
            logger.log_pr_curve("test/pr_curve", outputs.targets, probabilities, step)


# --- regression ------------------------------------------------------------------------------


@TASKS.register("regression")
class Regression(Task):
    """Continuous targets. The model learns them standardized with the train split's mean
    and std (``Splits.target_scale``); predictions and metrics are in the targets' units.

    With ``loss=poisson_nll`` the targets are counts (or any non-negative values): the
    model's output is the log-rate (or the rate, with ``log_input: false``) of the targets
    divided by the train mean. That division leaves the Poisson fit's solution unchanged
    (its score equations are the same up to the factor) and keeps the gradients of order
    one, where raw counts in the hundreds would overflow ``exp`` at the first steps.
    """

    name = "regression"
    target_kind = "continuous"
    default_monitor = "val/rmse"
    scores = ("mae", "rmse", "r2")

    def __init__(self, splits: Splits, loss: Mapping[str, Any]):
        super().__init__(splits, loss)
        self.mean, self.std = splits.target_scale or (0.0, 1.0)
        if self.loss_name == "poisson_nll" and self.mean <= 0:
            raise UserError(
                "loss=poisson_nll needs non-negative targets with a positive mean; "
                "use loss=mse for targets that can be negative"
            )
        self.counts = self.loss_name == "poisson_nll"
        self.log_rate = bool(loss.get("log_input", True))

    def _flat(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.squeeze(-1) if outputs.shape[-1] == 1 else outputs

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Model outputs to predictions in the targets' own units."""
        outputs = self._flat(outputs.float())
        if self.counts:
            return (outputs.exp() if self.log_rate else outputs) * self.mean
        return outputs * self.std + self.mean

    def compute_loss(self, loss_fn, outputs, targets):
        outputs = self._flat(outputs)
        if self.counts:
            return loss_fn(outputs, targets / self.mean)
        return loss_fn(outputs, (targets - self.mean) / self.std)

    def score_names(self) -> list[str]:
        return ["mae", "rmse", "r2"]

    def predictions(self, outputs, topk=5):
        return [{"prediction": value} for value in self.predict(outputs).reshape(-1).tolist()]

    def metrics(self, per_class: bool = False) -> RegressionMetrics:
        from trainkit.metrics import RegressionMetrics

        return RegressionMetrics(self.predict)

    def write_predictions(self, path: Path, outputs: Outputs) -> None:
        """``index,target,prediction``: one row per sample, in the targets' units."""
        predicted = self.predict(outputs.outputs)
        rows = (
            [int(i), f"{t:.6g}", f"{p:.6g}"]
            for i, t, p in zip(
                outputs.index.tolist(),
                outputs.targets.tolist(),
                predicted.tolist(),
                strict=True,
            )
        )
        _write_rows(path, ["index", "target", "prediction"], rows)


# --- metric learning -------------------------------------------------------------------------


def hardest_triplets(embeddings: torch.Tensor, labels: torch.Tensor):
    """Batch-hard mining (Hermans et al. 2017): for each anchor with a positive and a
    negative in the batch, its farthest positive and its nearest negative.

    Returns index tensors ``(anchors, positives, negatives)``.
    """
    distances = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    usable = positive.any(dim=1) & (~same).any(dim=1)
    hardest_positive = distances.masked_fill(~positive, -float("inf")).argmax(dim=1)
    hardest_negative = distances.masked_fill(same, float("inf")).argmin(dim=1)
    anchors = usable.nonzero().squeeze(1)
    return anchors, hardest_positive[anchors], hardest_negative[anchors]


@TASKS.register("metric_learning")
class MetricLearning(Task):
    """Embeddings of class-labelled samples (L2-normalized): same-class samples close,
    others far. Training mines the hardest triplet of each anchor in a batch; the loss is
    ``triplet_margin`` on the triplet, or, on its two distances d(a,p) and d(a,n),
    ``margin_ranking`` (d(a,n) should rank above d(a,p)) or ``soft_margin`` (the soft-margin
    triplet loss, log(1 + exp(d(a,p) - d(a,n)))). Measured by leave-one-out k-NN accuracy.
    """

    name = "metric_learning"
    default_monitor = "val/knn_acc"
    scores = ("knn_acc",)

    def __init__(
        self,
        splits: Splits,
        loss: Mapping[str, Any],
        embedding_dim: PositiveInt = 64,
        knn_k: PositiveInt = 5,
    ):
        super().__init__(splits, loss)
        self.embedding_dim, self.knn_k = embedding_dim, knn_k

    @property
    def head_size(self) -> int:
        return self.embedding_dim

    def compute_loss(self, loss_fn, outputs, targets):
        embeddings = F.normalize(outputs.float(), dim=1)
        anchors, positives, negatives = hardest_triplets(embeddings.detach(), targets)
        if len(anchors) == 0:  # no class twice in this batch: nothing to learn from
            return outputs.sum() * 0
        a, p, n = embeddings[anchors], embeddings[positives], embeddings[negatives]
        if self.loss_name not in ("margin_ranking", "soft_margin"):
            return loss_fn(a, p, n)
        positive_distance, negative_distance = (a - p).norm(dim=1), (a - n).norm(dim=1)
        ones = torch.ones_like(positive_distance)
        if self.loss_name == "margin_ranking":
            return loss_fn(negative_distance, positive_distance, ones)
        return loss_fn(negative_distance - positive_distance, ones)

    def score_names(self) -> list[str]:
        return ["knn_acc"]

    def predictions(self, outputs, topk=5):
        """The L2-normalized embedding, one value a column."""
        embeddings = F.normalize(outputs.float(), dim=1)
        return [{f"e{i}": value for i, value in enumerate(row)} for row in embeddings.tolist()]

    def metrics(self, per_class: bool = False) -> EmbeddingMetrics:
        from trainkit.metrics import EmbeddingMetrics

        return EmbeddingMetrics(self.knn_k)

    def write_predictions(self, path: Path, outputs: Outputs) -> None:
        """``index,target,prediction``: the label the k nearest other test samples vote for."""
        from trainkit.metrics import knn_predict

        embeddings = F.normalize(outputs.outputs.float(), dim=1)
        predicted = knn_predict(
            embeddings, outputs.targets, embeddings, self.knn_k, leave_one_out=True
        )
        rows = zip(
            outputs.index.tolist(), outputs.targets.tolist(), predicted.tolist(), strict=True
        )
        _write_rows(path, ["index", "target", "prediction"], rows)


# --- sequences -------------------------------------------------------------------------------


@TASKS.register("sequence")
class Sequence(Task):
    """Label sequences read from an input (digit strings from images) with CTC.

    The model gives (batch, time, classes) logits; class 0 is CTC's blank and the data's
    labels start at 1, with targets padded by 0. Decoding is greedy: the best class per
    step, repeats merged, blanks dropped.
    """

    name = "sequence"
    target_kind = "sequence"
    default_monitor = "val/seq_acc"
    scores = ("seq_acc", "cer")

    def __init__(self, splits: Splits, loss: Mapping[str, Any]):
        super().__init__(splits, loss)
        if self.loss_name == "ctc" and loss.get("blank", 0) != 0:
            raise UserError(
                f"loss.blank={loss['blank']}, but task=sequence keeps class 0 for the blank "
                "(the data's labels start at 1): set loss.blank=0"
            )

    def _check(self, outputs: torch.Tensor) -> None:
        if outputs.ndim != 3:
            raise UserError(
                f"task=sequence needs model outputs of shape (batch, time, classes); the "
                f"model gives {tuple(outputs.shape)}: use model=conv_transformer"
            )

    def compute_loss(self, loss_fn, outputs, targets):
        self._check(outputs)
        log_probs = outputs.float().log_softmax(dim=2).transpose(0, 1)  # CTC wants (T, N, C)
        batch, steps = outputs.shape[:2]
        input_lengths = torch.full((batch,), steps, dtype=torch.long, device=outputs.device)
        target_lengths = (targets > 0).sum(dim=1)
        return loss_fn(log_probs, targets, input_lengths, target_lengths)

    def decode(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[list, list]:
        """Greedy-decoded predictions and the targets, as strings of class names."""
        self._check(outputs)
        names = self.splits.class_names
        predicted = []
        for best in outputs.argmax(dim=2).tolist():
            merged = [c for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]
            predicted.append("".join(names[c] for c in merged))
        expected = ["".join(names[c] for c in row if c != 0) for row in targets.tolist()]
        return predicted, expected

    def score_names(self) -> list[str]:
        return ["seq_acc", "cer"]

    def predictions(self, outputs, topk=5):
        blank = torch.zeros(outputs.shape[0], 1, dtype=torch.long)
        predicted, _ = self.decode(outputs, blank)
        return [{"prediction": text} for text in predicted]

    def metrics(self, per_class: bool = False) -> SequenceMetrics:
        from trainkit.metrics import SequenceMetrics

        return SequenceMetrics(self.decode)

    def write_predictions(self, path: Path, outputs: Outputs) -> None:
        """``index,target,prediction``: the label strings."""
        predicted, expected = self.decode(outputs.outputs, outputs.targets)
        rows = zip(outputs.index.tolist(), expected, predicted, strict=True)
        _write_rows(path, ["index", "target", "prediction"], rows)
