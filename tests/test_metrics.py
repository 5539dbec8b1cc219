"""Each task's metrics against scikit-learn or a hand count on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)

from trainkit.metrics import ClassificationMetrics

NUM_CLASSES = 10
BATCHES = (64, 100, 36)  # 200 samples in batches of different sizes


def random_predictions(seed: int = 0, num_classes: int = NUM_CLASSES, n: int = 200):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=generator)
    targets = torch.randint(0, num_classes, (n,), generator=generator)
    # Make about half the predictions right, so the scores are not all near chance.
    right = torch.rand(n, generator=generator) < 0.5
    logits[right, targets[right]] += 3.0
    return logits, targets


def feed(metrics: ClassificationMetrics, logits, targets, batches=BATCHES):
    losses, sizes = [], []
    start = 0
    for size in batches:
        batch_logits = logits[start : start + size]
        batch_targets = targets[start : start + size]
        loss = torch.nn.functional.cross_entropy(batch_logits, batch_targets)
        metrics.update(batch_logits, batch_targets, loss)
        losses.append(loss.item())
        sizes.append(size)
        start += size
    assert start == len(targets)
    return np.array(losses), np.array(sizes)


@pytest.fixture(scope="module")
def computed():
    logits, targets = random_predictions()
    metrics = ClassificationMetrics(NUM_CLASSES, per_class=True)
    losses, sizes = feed(metrics, logits, targets)
    values = metrics.compute("test")
    return values, logits, targets, losses, sizes


def test_accuracy(computed):
    values, logits, targets, _, _ = computed
    expected = accuracy_score(targets.numpy(), logits.argmax(1).numpy())
    assert 0.3 < expected < 0.9  # the data is neither trivial nor random
    assert values["test/acc"] == pytest.approx(expected, abs=1e-6)


def test_balanced_accuracy_on_imbalanced_classes():
    logits, targets = random_predictions(seed=3, num_classes=4, n=400)
    targets[:300] = 0  # three quarters of the samples are class 0, which the model gets right
    logits[:300] = torch.randn(300, 4, generator=torch.Generator().manual_seed(4))
    logits[:300, 0] += 3.0
    metrics = ClassificationMetrics(4)
    feed(metrics, logits, targets, batches=(150, 250))
    values = metrics.compute("val")
    predicted = logits.argmax(1).numpy()
    expected = balanced_accuracy_score(targets.numpy(), predicted)
    assert expected < accuracy_score(targets.numpy(), predicted) - 0.1  # they differ here
    assert values["val/balanced_acc"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_leaves_out_a_class_the_split_lacks_even_when_predicted():
    """Class 2 has no sample here but is predicted 17 times: it has no recall to average
    (scikit-learn: 0.25; it was 0.1667, counting it as 0)."""
    targets = torch.tensor([0] * 20 + [1] * 20)
    predicted = torch.tensor([1] * 3 + [2] * 17 + [1] * 10 + [2] * 10)
    logits = torch.nn.functional.one_hot(predicted, 3).float()
    metrics = ClassificationMetrics(3)
    feed(metrics, logits, targets, batches=(15, 25))
    expected = balanced_accuracy_score(targets.numpy(), predicted.numpy())
    assert expected == 0.25
    assert metrics.compute("val")["val/balanced_acc"] == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize(
    ("name", "score"), [("precision", precision_score), ("recall", recall_score), ("f1", f1_score)]
)
def test_macro_scores(computed, name, score):
    values, logits, targets, _, _ = computed
    expected = score(targets.numpy(), logits.argmax(1).numpy(), average="macro", zero_division=0)
    assert values[f"test/{name}"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("name", "score"), [("precision", precision_score), ("recall", recall_score), ("f1", f1_score)]
)
def test_per_class_scores(computed, name, score):
    values, logits, targets, _, _ = computed
    expected = score(
        targets.numpy(),
        logits.argmax(1).numpy(),
        labels=list(range(NUM_CLASSES)),
        average=None,
        zero_division=0,
    )
    got = [values[f"test/{name}/{c}"] for c in range(NUM_CLASSES)]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_confusion_matrix(computed):
    values, logits, targets, _, _ = computed
    expected = confusion_matrix(
        targets.numpy(), logits.argmax(1).numpy(), labels=list(range(NUM_CLASSES))
    )
    assert values["test/confusion_matrix"] == expected.tolist()
    assert sum(map(sum, values["test/confusion_matrix"])) == 200


def test_top5_accuracy(computed):
    values, logits, targets, _, _ = computed
    expected = top_k_accuracy_score(
        targets.numpy(), logits.numpy(), k=5, labels=list(range(NUM_CLASSES))
    )
    assert values["test/acc"] < expected < 1.0
    assert values["test/acc_top5"] == pytest.approx(expected, abs=1e-6)


def test_loss_is_the_sample_weighted_mean_of_batch_losses(computed):
    values, logits, targets, losses, sizes = computed
    expected = float((losses * sizes).sum() / sizes.sum())
    # With unequal batches this differs from the plain mean of the batch losses.
    assert abs(expected - losses.mean()) > 1e-4
    assert values["test/loss"] == pytest.approx(expected, rel=1e-5)
    # ... and equals the loss over all samples at once.
    whole = torch.nn.functional.cross_entropy(logits, targets).item()
    assert values["test/loss"] == pytest.approx(whole, rel=1e-5)


def test_keys_without_per_class():
    logits, targets = random_predictions(seed=1)
    metrics = ClassificationMetrics(NUM_CLASSES)
    feed(metrics, logits, targets)
    assert set(metrics.compute("val")) == {
        "val/loss",
        "val/acc",
        "val/balanced_acc",
        "val/acc_top5",
        "val/precision",
        "val/recall",
        "val/f1",
    }


def test_class_names_label_per_class_values():
    logits, targets = random_predictions(seed=2, num_classes=3)
    metrics = ClassificationMetrics(3, per_class=True)
    feed(metrics, logits, targets)
    values = metrics.compute("test", class_names=["cat", "dog", "eel"])
    expected = f1_score(targets.numpy(), logits.argmax(1).numpy(), labels=[0, 1, 2], average=None)
    got = [values[f"test/f1/{name}"] for name in ("cat", "dog", "eel")]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert "test/f1/0" not in values


def test_a_class_absent_from_targets_and_predictions():
    logits, targets = random_predictions(seed=3)
    absent = 7
    targets = torch.where(targets == absent, torch.full_like(targets, 2), targets)
    logits[:, absent] = -100.0  # never predicted
    preds = logits.argmax(1)
    assert not (targets == absent).any() and not (preds == absent).any()
    metrics = ClassificationMetrics(NUM_CLASSES, per_class=True)
    feed(metrics, logits, targets)
    values = metrics.compute("test")
    present = sorted(set(targets.tolist()) | set(preds.tolist()))
    assert absent not in present and len(present) == NUM_CLASSES - 1
    for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = score(
            targets.numpy(), preds.numpy(), labels=present, average="macro", zero_division=0
        )
        # Averaging over all 10 labels would give a smaller value: the absent class is left out.
        all_labels = score(
            targets.numpy(),
            preds.numpy(),
            labels=list(range(10)),
            average="macro",
            zero_division=0,
        )
        assert all_labels < expected
        assert values[f"test/{name}"] == pytest.approx(expected, abs=1e-6)
        assert values[f"test/{name}/{absent}"] == 0.0
    assert values["test/acc"] == pytest.approx(accuracy_score(targets, preds), abs=1e-6)
    matrix = np.array(values["test/confusion_matrix"])
    assert matrix[absent].sum() == 0 and matrix[:, absent].sum() == 0


def test_no_top5_with_three_classes():
    logits, targets = random_predictions(seed=4, num_classes=3)
    metrics = ClassificationMetrics(3, per_class=True)
    feed(metrics, logits, targets)
    values = metrics.compute("val")
    assert "val/acc_top5" not in values
    assert "val/acc" in values


def test_reset_starts_over():
    logits, targets = random_predictions(seed=5)
    metrics = ClassificationMetrics(NUM_CLASSES)
    feed(metrics, -logits, targets)  # mostly wrong
    metrics.reset()
    feed(metrics, logits, targets)
    values = metrics.compute("val")
    expected = accuracy_score(targets.numpy(), logits.argmax(1).numpy())
    assert values["val/acc"] == pytest.approx(expected, abs=1e-6)
    whole = torch.nn.functional.cross_entropy(logits, targets).item()
    assert values["val/loss"] == pytest.approx(whole, rel=1e-5)


def test_binary_auroc_and_average_precision_match_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(120, 2, generator=generator)
    targets = torch.randint(0, 2, (120,), generator=generator)
    metrics = ClassificationMetrics(2)
    for part in (slice(0, 50), slice(50, 120)):
        metrics.update(logits[part], targets[part], torch.tensor(0.0))
    values = metrics.compute("test")
    positive = logits.softmax(dim=1)[:, 1].numpy()
    assert values["test/auroc"] == pytest.approx(roc_auc_score(targets.numpy(), positive))
    assert values["test/average_precision"] == pytest.approx(
        average_precision_score(targets.numpy(), positive)
    )
    three = ClassificationMetrics(3)
    three.update(
        torch.randn(4, 3, generator=generator), torch.tensor([0, 1, 2, 0]), torch.tensor(0.0)
    )
    assert "test/auroc" not in three.compute("test")


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_scalar_names_are_exactly_the_single_numbers_compute_returns(num_classes):
    generator = torch.Generator().manual_seed(5)
    metrics = ClassificationMetrics(num_classes, per_class=True)
    targets = torch.arange(12) % num_classes
    metrics.update(torch.randn(12, num_classes, generator=generator), targets, torch.tensor(1.0))
    values = metrics.compute("val")
    singles = {k for k, v in values.items() if k.count("/") == 1 and isinstance(v, float)}
    assert set(metrics.scalar_names("val")) == singles


# --- the other tasks' metrics ----------------------------------------------------------------


def test_regression_metrics_match_scikit_learn_in_the_targets_units():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    from trainkit.metrics import RegressionMetrics

    generator = torch.Generator().manual_seed(3)
    outputs = torch.randn(200, 1, generator=generator)
    targets = 150 + 50 * (outputs.squeeze(1) + 0.5 * torch.randn(200, generator=generator))
    predictions = outputs.squeeze(1) * 50 + 150
    metrics = RegressionMetrics(lambda o: o.squeeze(1) * 50 + 150)
    for start in range(0, 200, 64):
        batch = slice(start, start + 64)
        metrics.update(outputs[batch], targets[batch], torch.tensor(0.0))
    values = metrics.compute("test")
    assert values["test/mae"] == pytest.approx(mean_absolute_error(targets, predictions), rel=1e-5)
    assert values["test/rmse"] == pytest.approx(
        mean_squared_error(targets, predictions) ** 0.5, rel=1e-5
    )
    assert values["test/r2"] == pytest.approx(r2_score(targets, predictions), rel=1e-5)
    assert set(metrics.scalar_names("val")) == {"val/loss", "val/mae", "val/rmse", "val/r2"}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_accuracy_matches_scikit_learns_neighbours_leaving_each_sample_out(k):
    from sklearn.neighbors import NearestNeighbors

    from trainkit.metrics import EmbeddingMetrics

    generator = torch.Generator().manual_seed(k)
    labels = torch.randint(0, 2, (150,), generator=generator)  # two classes, odd k: no ties
    embeddings = torch.randn(150, 8, generator=generator) + labels[:, None] * 0.8
    metrics = EmbeddingMetrics(k)
    for start in range(0, 150, 64):
        batch = slice(start, start + 64)
        metrics.update(embeddings[batch], labels[batch], torch.tensor(0.0))
    unit = (embeddings / embeddings.norm(dim=1, keepdim=True)).numpy()
    # Without a query, kneighbors leaves each point out of its own neighbours.
    neighbours = NearestNeighbors(n_neighbors=k).fit(unit).kneighbors(return_distance=False)
    votes = labels.numpy()[neighbours].sum(axis=1)
    predicted = (votes * 2 > k).astype(int)
    expected = (predicted == labels.numpy()).mean()
    assert metrics.compute("test")["test/knn_acc"] == pytest.approx(expected, abs=1e-6)


def levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def test_sequence_accuracy_and_character_error_rate_match_a_hand_count():
    from trainkit.metrics import SequenceMetrics

    predicted = ["123", "45", "6789", "", "000"]
    expected = ["123", "456", "6788", "12", "00"]
    metrics = SequenceMetrics(lambda outputs, targets: (predicted, expected))
    metrics.update(torch.zeros(5, 4, 11), torch.zeros(5, 3), torch.tensor(1.5))
    values = metrics.compute("test")
    edits = sum(levenshtein(p, e) for p, e in zip(predicted, expected, strict=True))
    assert values["test/cer"] == pytest.approx(edits / sum(len(e) for e in expected))
    assert values["test/seq_acc"] == pytest.approx(1 / 5)
    assert values["test/loss"] == pytest.approx(1.5)


def test_knn_takes_the_majority_and_breaks_a_tie_by_the_nearest_neighbour():
    """Against scikit-learn's KNeighborsClassifier for majorities, and by hand for the tie
    (neighbours 6, 8, 8, 0, 6 from nearest: 6 and 8 have two votes, 6 is nearer)."""
    from sklearn.neighbors import KNeighborsClassifier

    from trainkit.metrics import knn_predict

    angles = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 1.0])  # from the query (angle 0) out
    gallery = torch.stack([angles.cos(), angles.sin()], dim=1)
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(gallery, torch.tensor([6, 8, 8, 0, 6, 1]), query, k=5).item() == 6
    assert knn_predict(gallery, torch.tensor([8, 6, 6, 0, 8, 1]), query, k=5).item() == 8

    generator = torch.Generator().manual_seed(0)
    points = torch.nn.functional.normalize(torch.randn(200, 8, generator=generator), dim=1)
    labels = torch.randint(0, 3, (200,), generator=generator)
    queries = torch.nn.functional.normalize(torch.randn(50, 8, generator=generator), dim=1)
    ours = knn_predict(points, labels, queries, k=3)  # k odd over 3 labels: ties need 1-1-1
    theirs = KNeighborsClassifier(3, metric="cosine").fit(points, labels).predict(queries)
    counts = [torch.bincount(labels[(queries[i] @ points.T).topk(3).indices], minlength=3)
              for i in range(50)]  # fmt: skip
    majority = [i for i in range(50) if counts[i].max() >= 2]
    assert ours[majority].tolist() == theirs[majority].tolist()
