"""Loss builders, each checked against hand-computed values or its formula in plain tensor math."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainkit import losses
from trainkit.errors import UserError
from trainkit.losses import fit_of
from trainkit.registry import LOSSES


def build(name: str, num_classes: int = 3, **params) -> nn.Module:
    return LOSSES.build({"name": name, **params}, "loss", num_classes=num_classes)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Written out, so the tests do not check torch against itself."""
    return logits - logits.exp().sum(dim=1, keepdim=True).log()


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + (-x).exp())


LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
TARGETS = torch.tensor([0, 2, 1, 0])


# --- the catalog ---------------------------------------------------------------------------


BUILTIN = sorted(n for n in LOSSES.names() if LOSSES.get(n).__module__ == losses.__name__)


def test_every_builtin_loss_says_which_task_it_belongs_to():
    for name in BUILTIN:
        assert fit_of(name) is not None and fit_of(name).inputs, name
    assert [n for n in BUILTIN if fit_of(n).soft_targets] == ["cross_entropy"]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_loss_builds_with_its_defaults(name):
    assert isinstance(build(name), nn.Module)


# --- regression ----------------------------------------------------------------------------

PRED = torch.tensor([0.0, 0.0])
TARGET = torch.tensor([0.5, 3.0])  # one error below 1 and 2, one above both


def test_l1():
    loss = build("l1")(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 5.0]))
    assert loss.item() == pytest.approx(4 / 3)


def test_mse():
    loss = build("mse")(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 5.0]))
    assert loss.item() == pytest.approx(8 / 3)


def test_smooth_l1_below_and_above_beta():
    # beta=1: 0.5 * 0.5^2 / 1 = 0.125 and 3 - 0.5 = 2.5
    assert build("smooth_l1")(PRED, TARGET).item() == pytest.approx((0.125 + 2.5) / 2)
    # beta=2: 0.5 * 0.5^2 / 2 = 0.0625 and 3 - 1 = 2
    assert build("smooth_l1", beta=2.0)(PRED, TARGET).item() == pytest.approx((0.0625 + 2) / 2)


def test_huber_below_and_above_delta_and_equals_delta_times_smooth_l1():
    # delta=2: 0.5 * 0.5^2 = 0.125 and 2 * (3 - 1) = 4
    huber = build("huber", delta=2.0)(PRED, TARGET).item()
    assert huber == pytest.approx((0.125 + 4) / 2)
    assert build("huber")(PRED, TARGET).item() == pytest.approx((0.125 + 2.5) / 2)
    x, y = torch.randn(10), torch.randn(10) * 3
    for delta in (0.5, 1.0, 2.0):
        expected = delta * build("smooth_l1", beta=delta)(x, y)
        assert build("huber", delta=delta)(x, y).item() == pytest.approx(expected.item())


def test_poisson_nll_with_log_input():
    x, y = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.0, 4.0])
    expected = (x.exp() - y * x).mean()
    assert build("poisson_nll")(x, y).item() == pytest.approx(expected.item())


def test_poisson_nll_with_rates():
    x, y = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([1.0, 0.0, 4.0])
    expected = (x - y * (x + 1e-8).log()).mean()
    assert build("poisson_nll", log_input=False)(x, y).item() == pytest.approx(expected.item())


# --- classification ------------------------------------------------------------------------


def test_nll_from_logits_equals_cross_entropy():
    expected = build("cross_entropy")(LOGITS, TARGETS)
    assert build("nll")(LOGITS, TARGETS).item() == pytest.approx(expected.item())
    manual = -log_softmax(LOGITS)[torch.arange(4), TARGETS].mean()
    assert expected.item() == pytest.approx(manual.item())


def test_nll_on_log_probabilities():
    log_probs = log_softmax(LOGITS)
    expected = -log_probs[torch.arange(4), TARGETS].mean()
    loss = build("nll", from_logits=False)(log_probs, TARGETS)
    assert loss.item() == pytest.approx(expected.item())


def test_cross_entropy_label_smoothing_follows_the_documented_convention():
    eps, classes = 0.1, 3
    onehot = torch.zeros(4, classes)
    onehot[torch.arange(4), TARGETS] = 1
    smoothed = (1 - eps) * onehot + eps / classes
    expected = -(smoothed * log_softmax(LOGITS)).sum(dim=1).mean()
    loss = build("cross_entropy", label_smoothing=eps)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(expected.item())


def test_cross_entropy_weight_is_a_weighted_mean():
    weight = torch.tensor([1.0, 2.0, 0.5])
    w = weight[TARGETS]
    expected = (w * -log_softmax(LOGITS)[torch.arange(4), TARGETS]).sum() / w.sum()
    loss = build("cross_entropy", class_weights=[1.0, 2.0, 0.5])(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(expected.item())


def test_focal_with_gamma_0_equals_cross_entropy():
    expected = build("cross_entropy")(LOGITS, TARGETS)
    loss = build("focal", gamma=0.0, alpha=None)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(expected.item())


def test_focal_gamma_2_by_hand():
    # Sample 1: p_t = 1/2; sample 2: p_t = 3/4.
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    targets = torch.tensor([0, 0])
    expected = (0.5**2 * math.log(2) + 0.25**2 * math.log(4 / 3)) / 2
    loss = build("focal", num_classes=2, gamma=2.0)(logits, targets)
    assert loss.item() == pytest.approx(expected)


def test_focal_alpha_weighting():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    targets = torch.tensor([0, 1])  # p_t = 1/2 and 1/4
    per_class = build("focal", num_classes=2, gamma=0.0, alpha=[0.25, 0.75])(logits, targets)
    assert per_class.item() == pytest.approx((0.25 * math.log(2) + 0.75 * math.log(4)) / 2)
    plain = build("focal", num_classes=2, gamma=2.0)(logits, targets)
    scaled = build("focal", num_classes=2, gamma=2.0, alpha=0.5)(logits, targets)
    assert scaled.item() == pytest.approx(0.5 * plain.item())


def test_focal_alpha_is_a_buffer_so_it_moves_with_the_module():
    module = build("focal", alpha=[0.2, 0.3, 0.5])
    assert torch.equal(dict(module.named_buffers())["alpha"], torch.tensor([0.2, 0.3, 0.5]))


def test_bce_with_logits():
    x, y = torch.tensor([1.5, -0.5, 0.0, 2.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    s = sigmoid(x)
    expected = -(y * s.log() + (1 - y) * (1 - s).log()).mean()
    assert build("bce")(x, y).item() == pytest.approx(expected.item())
    weighted = -(3.0 * y * s.log() + (1 - y) * (1 - s).log()).mean()
    assert build("bce", pos_weight=3.0)(x, y).item() == pytest.approx(weighted.item())


def test_bce_pos_weight_per_class():
    x = torch.tensor([[1.5, -0.5], [0.0, 2.0]])
    y = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    s, pw = sigmoid(x), torch.tensor([2.0, 0.5])
    expected = -(pw * y * s.log() + (1 - y) * (1 - s).log()).mean()
    loss = build("bce", num_classes=2, pos_weight=[2.0, 0.5])(x, y)
    assert loss.item() == pytest.approx(expected.item())


# --- sequences, ranking and embeddings -----------------------------------------------------


def test_ctc_single_step_single_label_is_minus_log_p():
    probs = torch.tensor([0.2, 0.5, 0.3])  # blank, a, b
    log_probs = probs.log().view(1, 1, 3)  # (T, N, C)
    loss = build("ctc")(log_probs, torch.tensor([[1]]), torch.tensor([1]), torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(0.5))


def test_ctc_two_steps_sums_the_alignments():
    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7]])  # T=2, classes blank and a
    log_probs = probs.log().view(2, 1, 2)
    # "a" from aa, a-, -a; the mean divides by the target length (1).
    expected = -math.log(0.4 * 0.7 + 0.4 * 0.3 + 0.6 * 0.7)
    loss = build("ctc")(log_probs, torch.tensor([[1]]), torch.tensor([2]), torch.tensor([1]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ctc_zero_infinity_zeroes_impossible_alignments():
    log_probs = torch.tensor([0.2, 0.5, 0.3]).log().view(1, 1, 3)
    args = (log_probs, torch.tensor([[1, 2]]), torch.tensor([1]), torch.tensor([2]))  # T < S
    assert math.isinf(build("ctc")(*args).item())
    assert build("ctc", zero_infinity=True)(*args).item() == 0.0


def test_margin_ranking():
    x1, x2 = torch.tensor([1.0, 0.2, -1.0]), torch.tensor([0.5, 0.4, 0.0])
    y = torch.tensor([1.0, 1.0, -1.0])
    expected = torch.clamp(-y * (x1 - x2) + 0.3, min=0).mean()
    loss = build("margin_ranking", margin=0.3)(x1, x2, y)
    assert loss.item() == pytest.approx(expected.item())


def test_soft_margin():
    x, y = torch.tensor([2.0, -0.5, 0.1]), torch.tensor([1.0, 1.0, -1.0])
    expected = (1 + (-y * x).exp()).log().mean()
    assert build("soft_margin")(x, y).item() == pytest.approx(expected.item())


def test_triplet_margin_with_euclidean_distances():
    anchor = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    positive = torch.tensor([[3.0, 4.0], [1.0, 2.0]])  # distances 5 and 1
    negative = torch.tensor([[1.0, 0.0], [4.0, 5.0]])  # distances 1 and 5
    expected = (max(5 - 1 + 0.5, 0) + max(1 - 5 + 0.5, 0)) / 2
    loss = build("triplet_margin", margin=0.5)(anchor, positive, negative)
    assert loss.item() == pytest.approx(expected, abs=1e-4)  # torch adds eps=1e-6 to a - p


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "focal", "gamma": -1}, r"^loss\.gamma=-1 is out of range: it must be >= 0$"),
        ({"name": "focal", "alpha": 1.5}, r"^loss\.alpha=1\.5 is out of range"),
        ({"name": "focal", "alpha": [0.5, 2]}, r"^loss\.alpha\[1\]=2 is out of range"),
        ({"name": "huber", "delta": 0}, r"^loss\.delta=0 is out of range: it must be > 0$"),
        ({"name": "smooth_l1", "beta": -1.0}, r"^loss\.beta=-1\.0 is out of range"),
        ({"name": "bce", "pos_weight": -2.0}, r"^loss\.pos_weight=-2\.0 is out of range"),
        ({"name": "bce", "pos_weight": "big"}, r"^loss\.pos_weight='big' has the wrong type"),
        ({"name": "ctc", "blank": -1}, r"^loss\.blank=-1 is out of range"),
        ({"name": "nll", "from_logits": "yes"}, r"^loss\.from_logits='yes' has the wrong type"),
        ({"name": "poisson_nll", "eps": 0.0}, r"^loss\.eps=0\.0 is out of range"),
        ({"name": "triplet_margin", "p": 0}, r"^loss\.p=0 is out of range"),
        ({"name": "margin_ranking", "margin": -0.1}, r"^loss\.margin=-0\.1 is out of range"),
        ({"name": "l1", "reduction": "sum"}, r"^unknown key loss\.reduction;"),
        ({"name": "mse", "num_classes": 3}, r"^loss\.num_classes is set by trainkit at run"),
    ],
)
def test_bad_values_fail_validation(node, message):
    with pytest.raises(UserError, match=message):
        LOSSES.check(node, "loss")
    with pytest.raises(UserError, match=message):
        LOSSES.build(node, "loss", num_classes=3)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            {"name": "bce", "pos_weight": [1.0, 2.0]},
            "loss.pos_weight has 2 entries but the data has 3 classes",
        ),
        (
            {"name": "focal", "alpha": [0.5, 0.5]},
            "loss.alpha has 2 entries but the data has 3 classes",
        ),
        (
            {"name": "cross_entropy", "class_weights": [1.0]},
            "loss.class_weights has 1 entries but the data has 3 classes",
        ),
    ],
)
def test_per_class_lists_must_have_one_entry_per_class(node, message):
    LOSSES.check(node, "loss")  # the length is only known at run time
    with pytest.raises(UserError) as error:
        LOSSES.build(node, "loss", num_classes=3)
    assert str(error.value) == message
