"""Optimizer builders: parameter groups and equivalence with torch.optim configured by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainkit.optim import adam, parameter_groups, sgd
from trainkit.registry import OPTIMIZERS, load_components


def small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # weight 4-d, bias 1-d
        nn.BatchNorm2d(4),  # weight and bias 1-d
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),  # weight 2-d, bias 1-d
    )


def ids(parameters) -> set[int]:
    return {id(p) for p in parameters}


def test_parameter_groups_split_by_dimension():
    model = small_convnet()
    groups = parameter_groups(model, weight_decay=5e-4)
    assert len(groups) == 2
    decay, no_decay = groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    conv1, bn, _, conv2, _, linear = model
    assert ids(decay["params"]) == ids([conv1.weight, conv2.weight, linear.weight])
    assert ids(no_decay["params"]) == ids([conv1.bias, bn.weight, bn.bias, linear.bias])
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim <= 1 for p in no_decay["params"])


def test_parameter_groups_cover_every_trainable_parameter_once():
    model = small_convnet()
    model[1].weight.requires_grad_(False)  # a frozen parameter is left out
    groups = parameter_groups(model, weight_decay=0.1)
    grouped = [p for group in groups for p in group["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(ids(grouped)) == len(trainable)
    assert ids(grouped) == ids(trainable)
    assert id(model[1].weight) not in ids(grouped)


def test_parameter_groups_with_shared_parameters():
    linear = nn.Linear(3, 3)
    model = nn.Sequential(linear, nn.ReLU(), linear)
    grouped = [p for group in parameter_groups(model, 0.1) for p in group["params"]]
    assert len(grouped) == 2 and ids(grouped) == ids(linear.parameters())


def test_parameter_groups_without_one_dimensional_parameters():
    model = nn.Linear(3, 2, bias=False)
    groups = parameter_groups(model, 0.01)
    assert len(groups) == 1
    assert ids(groups[0]["params"]) == {id(model.weight)}


def batches():
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(6, 1, 4, 4, generator=generator),
            torch.randint(0, 3, (6,), generator=generator),
        )
        for _ in range(3)
    ]


def train_three_steps(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    for x, y in batches():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def assert_all_moved(model: nn.Module, initial: nn.Module) -> None:
    """Every parameter moved, except the first conv's bias: the BatchNorm after it cancels
    it, so its gradient is (about) zero."""
    for (name, p), q in zip(model.named_parameters(), initial.parameters(), strict=True):
        if name != "0.bias":
            assert not torch.equal(p, q), name


@pytest.mark.parametrize(
    "params",
    [
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.5, "nesterov": True},
        {"lr": 0.2, "momentum": 0.9, "dampening": 0.3},
        {"lr": 0.3, "momentum": 0.0},
    ],
)
def test_sgd_matches_torch(params):
    model = small_convnet()
    reference = copy.deepcopy(model)
    initial = copy.deepcopy(model)
    train_three_steps(model, sgd(model, **params, weight_decay=0.0))
    by_hand = {"momentum": 0.9, "dampening": 0.0, "nesterov": False, **params}
    train_three_steps(reference, torch.optim.SGD(reference.parameters(), weight_decay=0, **by_hand))
    assert_same_parameters(model, reference)
    assert_all_moved(model, initial)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6},
        {"lr": 0.003, "betas": [0.5, 0.9], "amsgrad": True},
    ],
)
def test_adam_matches_torch(params):
    model = small_convnet()
    reference = copy.deepcopy(model)
    initial = copy.deepcopy(model)
    optimizer = adam(model, **params, weight_decay=0.0)
    by_hand = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False, **params}
    by_hand["betas"] = tuple(by_hand["betas"])
    assert optimizer.param_groups[0]["betas"] == by_hand["betas"]
    train_three_steps(model, optimizer)
    train_three_steps(
        reference, torch.optim.Adam(reference.parameters(), weight_decay=0, **by_hand)
    )
    assert_same_parameters(model, reference)
    assert_all_moved(model, initial)


def test_weight_decay_only_on_decay_group():
    model = small_convnet()
    optimizer = sgd(model, lr=0.1, momentum=0.0, weight_decay=0.5)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    # With zero gradients, only decayed weights move: w <- w - lr * wd * w.
    before = copy.deepcopy(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p, q in zip(model.parameters(), before.parameters(), strict=True):
        expected = q * (1 - 0.1 * 0.5) if p.ndim > 1 else q
        torch.testing.assert_close(p, expected)


def test_registry_builds_the_optimizers_from_config():
    load_components()
    model = small_convnet()
    built = OPTIMIZERS.build({"name": "sgd", "lr": 0.02, "weight_decay": 1e-4}, model=model)
    assert isinstance(built, torch.optim.SGD)
    assert [g["lr"] for g in built.param_groups] == [0.02, 0.02]
    assert [g["weight_decay"] for g in built.param_groups] == [1e-4, 0.0]
    built = OPTIMIZERS.build({"name": "adam", "betas": [0.8, 0.9]}, model=model)
    assert isinstance(built, torch.optim.Adam)
    assert built.param_groups[0]["betas"] == (0.8, 0.9)
