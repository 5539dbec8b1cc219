"""Each task against a formula or torch's own loss: how it calls its loss, what it predicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainkit.data import Splits, TensorSplit
from trainkit.errors import UserError
from trainkit.registry import LOSSES
from trainkit.tasks import (
    Classification,
    MetricLearning,
    Regression,
    Sequence,
    check_task_loss,
    hardest_triplets,
    lower_is_better,
    task_losses,
)


def splits(num_classes=3, target_kind="class", target_scale=None, class_names=()):
    empty = TensorSplit(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0))
    return Splits(
        empty,
        empty,
        empty,
        num_classes,
        (2,),
        list(class_names),
        target_kind=target_kind,
        target_scale=target_scale,
    )


def loss(name: str, **params):
    return LOSSES.build({"name": name, **params}, "loss", num_classes=2)


# --- which loss goes with which task -------------------------------------------------------


TASKS_OF_LOSSES = ["classification", "metric_learning", "regression", "sequence"]


@pytest.mark.parametrize("task", TASKS_OF_LOSSES)
def test_each_task_takes_its_own_losses_and_refuses_the_others(task):
    for name in LOSSES.names():
        if name in task_losses(task):
            check_task_loss(task, name)
        else:
            with pytest.raises(UserError, match=f"loss={name} needs .* task={task} takes"):
                check_task_loss(task, name)


def test_plugin_tasks_and_losses_are_trusted():
    check_task_loss("classification", "my_plugin_loss")
    check_task_loss("my_plugin_task", "mse")


def test_a_task_refuses_data_whose_targets_it_cannot_use():
    with pytest.raises(UserError) as error:
        Classification(splits(1, "continuous"), {"name": "cross_entropy"})
    assert str(error.value) == (
        "task=classification needs class labels, but the data set has continuous targets: "
        "use task=regression"
    )
    with pytest.raises(UserError, match="task=regression needs continuous targets"):
        Regression(splits(3), {"name": "mse"})


# --- classification ------------------------------------------------------------------------


def test_bce_on_two_logits_is_bce_on_their_difference_and_agrees_with_the_softmax():
    task = Classification(splits(2), {"name": "bce"})
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.4, 0.9]])
    targets = torch.tensor([1, 0, 1])
    z = logits[:, 1] - logits[:, 0]
    expected = -(
        targets * torch.log(torch.sigmoid(z)) + (1 - targets) * torch.log(1 - torch.sigmoid(z))
    )
    assert task.compute_loss(loss("bce"), logits, targets) == pytest.approx(expected.mean().item())
    assert torch.allclose(torch.sigmoid(z), logits.softmax(dim=1)[:, 1])


def test_a_binary_test_logs_the_confusion_matrix_and_the_pr_curve():
    """The README promises the confusion matrix of every classification test, binary too."""
    from trainkit.tasks import Outputs

    logged = []

    class Recorder:
        def log_confusion_matrix(self, tag, *args):
            logged.append(tag)

        def log_pr_curve(self, tag, *args):
            logged.append(tag)

    task = Classification(splits(2, class_names=["no", "yes"]), {"name": "cross_entropy"})
    outputs = Outputs(torch.arange(3), torch.tensor([0, 1, 1]), torch.randn(3, 2))
    task.log_test(Recorder(), {"test/confusion_matrix": torch.eye(2)}, outputs, step=1)
    assert logged == ["test/confusion_matrix", "test/pr_curve"]


def test_bce_needs_two_classes():
    with pytest.raises(UserError, match="loss=bce takes one logit per sample, for two classes"):
        Classification(splits(3), {"name": "bce"})


# --- regression ----------------------------------------------------------------------------


def fit_constant(loss_name: str, targets: torch.Tensor, steps: int = 3000) -> float:
    """The constant prediction that minimizes the loss over ``targets``."""
    scale = (targets.mean().item(), targets.std().item())
    task = Regression(splits(1, "continuous", scale), {"name": loss_name})
    output = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([output], lr=0.01)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.01, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        outputs = output.expand(len(targets), 1)
        task.compute_loss(loss(loss_name), outputs, targets).backward()
        optimizer.step()
        scheduler.step()
    return task.predict(output.detach()[None]).item()


def test_with_one_outlier_l2_lands_on_the_mean_and_l1_on_the_median():
    targets = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])  # mean 22, median 3
    assert fit_constant("mse", targets) == pytest.approx(22.0, abs=0.2)
    assert fit_constant("l1", targets) == pytest.approx(3.0, abs=0.2)


def test_regression_learns_standardized_targets_and_predicts_in_their_units():
    task = Regression(splits(1, "continuous", (150.0, 50.0)), {"name": "mse"})
    outputs = torch.tensor([[1.0], [-0.5]])
    targets = torch.tensor([200.0, 100.0])
    assert task.predict(outputs).tolist() == [200.0, 125.0]
    expected = ((1.0 - 1.0) ** 2 + (-0.5 + 1.0) ** 2) / 2
    assert task.compute_loss(loss("mse"), outputs, targets).item() == pytest.approx(expected)


def test_poisson_regression_divides_the_counts_by_their_mean_and_multiplies_back():
    task = Regression(splits(1, "continuous", (10.0, 3.0)), {"name": "poisson_nll"})
    outputs = torch.tensor([[0.0], [0.5]])
    targets = torch.tensor([10.0, 20.0])
    scaled = targets / 10.0
    expected = (outputs.squeeze(1).exp() - scaled * outputs.squeeze(1)).mean()
    assert task.compute_loss(loss("poisson_nll"), outputs, targets).item() == pytest.approx(
        expected.item()
    )
    assert task.predict(outputs).tolist() == pytest.approx([10.0, 10.0 * torch.e**0.5])


# --- metric learning -----------------------------------------------------------------------


def brute_force_hardest(embeddings, labels):
    found = []
    for a in range(len(labels)):
        positives = [j for j in range(len(labels)) if labels[j] == labels[a] and j != a]
        negatives = [j for j in range(len(labels)) if labels[j] != labels[a]]
        if positives and negatives:
            distance = [float((embeddings[a] - embeddings[j]).norm()) for j in range(len(labels))]
            found.append(
                (
                    a,
                    max(positives, key=lambda j: distance[j]),
                    min(negatives, key=lambda j: distance[j]),
                )
            )
    return found


def test_batch_hard_mining_matches_a_brute_force_search():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(12, 4, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0, 1, 2, 4])  # class 3 and 4: no positive
    anchors, positives, negatives = hardest_triplets(embeddings, labels)
    found = list(zip(anchors.tolist(), positives.tolist(), negatives.tolist(), strict=True))
    assert found == brute_force_hardest(embeddings, labels)


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("name", ["triplet_margin", "margin_ranking", "soft_margin"])
def test_metric_learning_losses_on_the_mined_triplets(name):
    generator = torch.Generator().manual_seed(1)
    outputs = torch.randn(10, 5, generator=generator)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    task = MetricLearning(splits(3), {"name": name}, embedding_dim=5)
    embeddings = unit(outputs)
    a, p, n = (embeddings[i] for i in hardest_triplets(embeddings, labels))
    d_ap, d_an = (a - p).norm(dim=1), (a - n).norm(dim=1)
    margin = 0.2
    params = {"margin": margin} if name != "soft_margin" else {}
    expected = {
        "triplet_margin": torch.clamp(d_ap - d_an + margin, min=0).mean(),
        "margin_ranking": torch.clamp(-(d_an - d_ap) + margin, min=0).mean(),
        "soft_margin": torch.log1p(torch.exp(d_ap - d_an)).mean(),
    }[name]
    value = task.compute_loss(loss(name, **params), outputs, labels)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_batch_without_a_triplet_gives_a_zero_loss_with_a_gradient():
    outputs = torch.randn(3, 4, requires_grad=True)
    task = MetricLearning(splits(3), {"name": "triplet_margin"})
    value = task.compute_loss(loss("triplet_margin"), outputs, torch.tensor([0, 1, 2]))
    value.backward()
    assert value.item() == 0 and outputs.grad is not None


def test_the_model_head_is_the_embedding():
    assert MetricLearning(splits(10), {"name": "triplet_margin"}, embedding_dim=32).head_size == 32


# --- sequences -----------------------------------------------------------------------------

DIGIT_NAMES = ["<blank>", *"0123456789"]


def one_hot_steps(*steps: int) -> torch.Tensor:
    """Outputs of one sample whose best class at each step is the given one."""
    return torch.nn.functional.one_hot(torch.tensor(steps), 11).float()[None] * 10


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    task = Sequence(splits(11, "sequence", class_names=DIGIT_NAMES), {"name": "ctc"})
    outputs = one_hot_steps(2, 2, 0, 2, 4, 4, 0, 0, 10)  # "1 1 _ 1 3 3 _ _ 9"
    targets = torch.tensor([[2, 2, 4, 10, 0]])
    predicted, expected = task.decode(outputs, targets)
    assert predicted == ["1139"] and expected == ["1139"]


def test_ctc_is_called_with_time_first_log_probabilities_and_the_lengths():
    task = Sequence(splits(11, "sequence", class_names=DIGIT_NAMES), {"name": "ctc"})
    generator = torch.Generator().manual_seed(2)
    outputs = torch.randn(3, 12, 11, generator=generator)
    targets = torch.tensor([[1, 2, 3, 0, 0], [4, 4, 0, 0, 0], [5, 6, 7, 8, 9]])
    expected = nn.CTCLoss()(
        outputs.log_softmax(2).transpose(0, 1),
        torch.cat([targets[0, :3], targets[1, :2], targets[2]]),  # the concatenated form
        torch.tensor([12, 12, 12]),
        torch.tensor([3, 2, 5]),
    )
    assert task.compute_loss(loss("ctc"), outputs, targets).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_sequence_task_errors():
    with pytest.raises(UserError, match="loss.blank=3, but task=sequence keeps class 0"):
        Sequence(splits(11, "sequence"), {"name": "ctc", "blank": 3})
    task = Sequence(splits(11, "sequence"), {"name": "ctc"})
    with pytest.raises(UserError, match=r"needs model outputs of shape \(batch, time, classes\)"):
        task.compute_loss(loss("ctc"), torch.zeros(2, 11), torch.ones(2, 3, dtype=torch.long))


# --- what is logged ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "data"),
    [
        (Classification, splits(2)),
        (Classification, splits(3)),
        (Classification, splits(10)),
        (Regression, splits(1, "continuous", target_scale=(0.0, 1.0))),
        (MetricLearning, splits(10)),
        (Sequence, splits(11, "sequence")),
    ],
)
def test_score_names_are_the_scores_the_metrics_compute(task, data):
    # score_names() answers without building the metrics (torchmetrics is slow to import).
    default_loss = {
        Classification: "cross_entropy",
        Regression: "mse",
        MetricLearning: "triplet_margin",
        Sequence: "ctc",
    }[task]
    built = task(data, {"name": default_loss})
    computed = built.metrics().scalar_names("val")
    assert sorted(computed) == sorted(["val/loss", *(f"val/{n}" for n in built.score_names())])
    assert built.default_monitor in computed
    # What a monitor is checked against before any data is read: every run's scores.
    assert set(built.score_names()) <= set(task.scores)


def test_each_score_a_task_may_log_is_logged_by_some_run_of_it():
    assert {
        name
        for n in (2, 3, 10)
        for name in Classification(splits(n), {"name": "nll"}).score_names()
    } == set(Classification.scores)


@pytest.mark.parametrize(
    ("name", "lower"),
    [("val/loss", True), ("val/rmse", True), ("val/cer", True), ("val/acc", False)],
)
def test_which_metrics_improve_by_going_down(name, lower):
    assert lower_is_better(name) is lower
