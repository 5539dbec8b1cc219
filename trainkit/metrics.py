"""Classification metrics, computed with torchmetrics and kept on the model's device.

``update`` is called once per batch and never reads a value back to the host, so a step
costs no device synchronisation; ``compute`` does the one read-back at the end of a split.
Under DDP, torchmetrics sums the states across processes inside ``compute``.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


class ClassificationMetrics:
    """Loss, accuracy, top-5 accuracy (with 5+ classes), macro precision, recall and F1;
    with two classes also ROC-AUC and average precision of class 1's probability.

    With ``per_class=True`` (the test split), also each class's precision, recall and F1
    and the confusion matrix (rows: true class, columns: predicted class).
    """

    def __init__(self, num_classes: int, per_class: bool = False):
        self.num_classes = num_classes
        scores = {
            # average="micro": the fraction of samples right (torchmetrics defaults to macro).
            "acc": MulticlassAccuracy(num_classes, average="micro"),
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
        self.loss = MeanMetric()
        # With two classes, threshold-free scores of the positive class (index 1)'s probability.
        self.binary = None
        if num_classes == 2:
            self.binary = MetricCollection(
                {"auroc": BinaryAUROC(), "average_precision": BinaryAveragePrecision()}
            )

    def to(self, device: torch.device) -> ClassificationMetrics:
        self.scores.to(device)
        self.loss.to(device)
        if self.binary is not None:
            self.binary.to(device)
        return self

    def reset(self) -> None:
        self.scores.reset()
        self.loss.reset()
        if self.binary is not None:
            self.binary.reset()

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """``loss`` is the batch's mean loss; it is weighted by the batch size."""
        self.scores.update(logits, targets)
        self.loss.update(loss.detach(), weight=targets.shape[0])
        if self.binary is not None:
            self.binary.update(logits.float().softmax(dim=1)[:, 1], targets)

    def scalar_names(self, prefix: str) -> list[str]:
        """The keys of the single-number values ``compute`` returns (what can be monitored)."""
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
