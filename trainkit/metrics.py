"""The metrics of each task, computed with torchmetrics and kept on the model's device.

Every metrics class has the same four methods: ``update`` once per batch (it never reads a
value back to the host, so a step costs no device synchronisation), ``compute`` once per
split (the one read-back), ``reset`` and ``scalar_names``. Under DDP, torchmetrics gathers
the states across processes inside ``compute``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import (
    MeanAbsoluteError,
    MeanMetric,
    MeanSquaredError,
    Metric,
    MetricCollection,
    R2Score,
)
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.text import CharErrorRate


class _LossAndScores:
    """The mean loss of a split plus a MetricCollection of scores; subclasses fill ``scores``
    and say in ``update`` what the scores are computed from."""

    scores: MetricCollection

    def __init__(self):
        self.loss = MeanMetric()

    def to(self, device: torch.device):
        self.scores.to(device)
        self.loss.to(device)
        return self

    def reset(self) -> None:
        self.scores.reset()
        self.loss.reset()

    def _update_loss(self, loss: torch.Tensor, targets: torch.Tensor, weight=None) -> None:
        """``loss`` is the batch's mean loss, over ``weight`` (the batch size if None; the
        targets' class weights' sum for a class-weighted loss): a split's mean loss."""
        self.loss.update(loss.detach(), weight=targets.shape[0] if weight is None else weight)

    def scalar_names(self, prefix: str) -> list[str]:
        """The keys of the single-number values ``compute`` returns (what can be monitored)."""
        return [f"{prefix}/{name}" for name in ("loss", *self.scores)]

    def compute(self, prefix: str, class_names: list[str] | None = None) -> dict:
        values = {f"{prefix}/loss": self.loss.compute().item()}
        for name, value in self.scores.compute().items():
            values[f"{prefix}/{name}"] = value.item()
        return values


class BalancedAccuracy(Metric):
    """The mean of the recalls of the classes the split has (scikit-learn's
    balanced_accuracy_score): what accuracy says when classes are imbalanced. A class the
    split lacks has no recall, predicted or not (torchmetrics' macro accuracy counts one the
    model predicts as 0)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("hits", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("support", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        right = logits.argmax(dim=1) == targets
        self.support += torch.bincount(targets, minlength=self.num_classes)
        self.hits += torch.bincount(targets[right], minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        present = self.support > 0
        return (self.hits[present] / self.support[present]).mean()


class ClassificationMetrics(_LossAndScores):
    """Loss, accuracy, balanced accuracy, top-5 accuracy (with 5+ classes), macro precision,
    recall and F1;
    with two classes also ROC-AUC and average precision of class 1's probability.

    With ``per_class=True`` (the test split), also each class's precision, recall and F1
    and the confusion matrix (rows: true class, columns: predicted class).
    """

    def __init__(self, num_classes: int, per_class: bool = False):
        super().__init__()
        self.num_classes = num_classes
        scores = {
            # average="micro": the fraction of samples right (torchmetrics defaults to macro).
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "balanced_acc": BalancedAccuracy(num_classes),
            "precision": MulticlassPrecision(num_classes, average="macro"),
            "recall": MulticlassRecall(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
        if num_classes >= 5:
            scores["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        if per_class:
            scores["class_precision"] = MulticlassPrecision(num_classes, average=None)
            scores["class_recall"] = MulticlassRecall(num_classes, average=None)
            scores["class_f1"] = MulticlassF1Score(num_classes, average=None)
            scores["confusion_matrix"] = MulticlassConfusionMatrix(num_classes)
        self.scores = MetricCollection(scores)
        # With two classes, threshold-free scores of the positive class (index 1)'s probability.
        self.binary = None
        if num_classes == 2:
            self.binary = MetricCollection(
                {"auroc": BinaryAUROC(), "average_precision": BinaryAveragePrecision()}
            )

    def to(self, device: torch.device) -> ClassificationMetrics:
        super().to(device)
        if self.binary is not None:
            self.binary.to(device)
        return self

    def reset(self) -> None:
        super().reset()
        if self.binary is not None:
            self.binary.reset()

    @torch.no_grad()
    def update(
        self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, weight=None
    ) -> None:
        """``loss`` is the batch's mean loss, over ``weight`` (see ``_update_loss``)."""
        self.scores.update(logits, targets)
        self._update_loss(loss, targets, weight)
        if self.binary is not None:
            self.binary.update(logits.float().softmax(dim=1)[:, 1], targets)

    def scalar_names(self, prefix: str) -> list[str]:
        names = ["loss", *(n for n in self.scores if not n.startswith("class_"))]
        names = [n for n in names if n != "confusion_matrix"]
        if self.binary is not None:
            names += list(self.binary)
        return [f"{prefix}/{name}" for name in names]

    def compute(self, prefix: str, class_names: list[str] | None = None) -> dict:
        """Flat ``{prefix/name: value}``; per-class values as ``prefix/f1/<class>``."""
        values = {f"{prefix}/loss": self.loss.compute().item()}
        names = class_names or [str(c) for c in range(self.num_classes)]
        for name, value in self.scores.compute().items():
            if name == "confusion_matrix":
                values[f"{prefix}/confusion_matrix"] = value.int().tolist()
            elif name.startswith("class_"):
                metric = name.removeprefix("class_")
                for class_name, class_value in zip(names, value.tolist(), strict=True):
                    values[f"{prefix}/{metric}/{class_name}"] = class_value
            else:
                values[f"{prefix}/{name}"] = value.item()
        if self.binary is not None:
            for name, value in self.binary.compute().items():
                values[f"{prefix}/{name}"] = value.item()
        return values


class RegressionMetrics(_LossAndScores):
    """Loss, mean absolute error, root mean squared error and R² of the predictions, in the
    targets' own units (``to_prediction`` maps the model's outputs to them)."""

    def __init__(self, to_prediction):
        super().__init__()
        self.to_prediction = to_prediction
        self.scores = MetricCollection(
            {"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False), "r2": R2Score()}
        )

    @torch.no_grad()
    def update(
        self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, weight=None
    ) -> None:
        self.scores.update(self.to_prediction(outputs).float(), targets.float())
        self._update_loss(loss, targets, weight)


class KNNAccuracy(Metric):
    """Leave-one-out k-nearest-neighbour accuracy of embeddings: each sample is classified by
    the majority label of its ``k`` nearest other samples of the same split (cosine distance;
    ties go to the nearest neighbour's label). Recall@1 of metric-learning papers is k=1."""

    full_state_update = False

    def __init__(self, k: int = 1):
        super().__init__()
        self.k = k
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        self.embeddings.append(F.normalize(embeddings.float(), dim=1))
        self.labels.append(labels)

    def compute(self) -> torch.Tensor:
        embeddings, labels = _cat(self.embeddings), _cat(self.labels)
        predicted = knn_predict(embeddings, labels, embeddings, self.k, leave_one_out=True)
        return (predicted == labels).float().mean()


def _cat(state) -> torch.Tensor:
    return torch.cat(state) if isinstance(state, list) else state


def knn_predict(
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    leave_one_out: bool = False,
) -> torch.Tensor:
    """The majority label among each query's ``k`` most similar gallery rows (rows are
    L2-normalized embeddings); a tie goes to the tied label of the nearest neighbour. With
    ``leave_one_out`` the queries are the gallery and a row is never its own neighbour."""
    similarity = queries @ gallery.T
    if leave_one_out:
        similarity.fill_diagonal_(-float("inf"))
    k = min(k, gallery.shape[0] - int(leave_one_out))
    nearest = similarity.topk(k, dim=1).indices
    neighbour_labels = gallery_labels[nearest]
    num_labels = int(gallery_labels.max()) + 1
    votes = F.one_hot(neighbour_labels, num_labels)  # (queries, k, labels)
    counts = votes.sum(dim=1)
    # Ties: the label whose nearest neighbour is nearest wins, by a bonus below one vote.
    ranks = torch.arange(k, device=votes.device)[None, :, None].expand_as(votes)
    first = torch.where(votes > 0, ranks, k).min(dim=1).values
    return (counts + (k - first) / (k + 1)).argmax(dim=1)


class EmbeddingMetrics(_LossAndScores):
    """Loss and the leave-one-out k-NN accuracy of a split's embeddings."""

    def __init__(self, k: int):
        super().__init__()
        self.scores = MetricCollection({"knn_acc": KNNAccuracy(k)})

    @torch.no_grad()
    def update(
        self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, weight=None
    ) -> None:
        self.scores.update(outputs, targets)
        self._update_loss(loss, targets, weight)


class SequenceMetrics(_LossAndScores):
    """Loss, sequence accuracy (the whole string right) and character error rate (edit
    distance over the number of target characters) of greedy-decoded label sequences."""

    def __init__(self, decode):
        super().__init__()
        self.decode = decode  # outputs, targets -> (predicted strings, target strings)
        self.scores = MetricCollection({"seq_acc": MeanMetric(), "cer": CharErrorRate()})

    @torch.no_grad()
    def update(
        self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, weight=None
    ) -> None:
        predicted, expected = self.decode(outputs, targets)
        hits = torch.tensor([p == e for p, e in zip(predicted, expected, strict=True)])
        self.scores["seq_acc"].update(hits.float().to(outputs.device))
        self.scores["cer"].update(predicted, expected)
        self._update_loss(loss, targets, weight)
