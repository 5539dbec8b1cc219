"""Optimizer builders: parameter groups and equivalence with torch.optim configured by hand."""

from __future__ import annotations

import copy
import fnmatch

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from trainkit import paths
from trainkit.errors import UserError
from trainkit.optim import layers, parameter_groups
from trainkit.registry import MODELS, OPTIMIZERS, load_components

load_components()
sgd, adam = OPTIMIZERS.get("sgd"), OPTIMIZERS.get("adam")


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


def test_parameter_groups_cover_every_parameter_once():
    model = small_convnet()
    model[1].weight.requires_grad_(False)  # frozen: grouped too, to train once unfrozen
    groups = parameter_groups(model, weight_decay=0.1)
    grouped = [p for group in groups for p in group["params"]]
    assert len(grouped) == len(ids(grouped)) == len(list(model.parameters()))
    assert ids(grouped) == ids(model.parameters())


def test_a_frozen_parameter_is_neither_stepped_nor_decayed_until_unfrozen():
    model = small_convnet()
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    optimizer = OPTIMIZERS.build({"name": "adamw", "lr": 0.1, "weight_decay": 0.5}, model=model)
    train_three_steps(model, optimizer)
    assert torch.equal(model[0].weight, frozen)
    model[0].requires_grad_(True)
    train_three_steps(model, optimizer)
    assert not torch.equal(model[0].weight, frozen)


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


# --- the whole catalog: every registered optimizer, from its YAML defaults ---------------

load_components()

TORCH_CLASSES = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
}
BUILTIN_NAMES = [
    name for name in OPTIMIZERS.names() if OPTIMIZERS.get(name).__module__ == "trainkit.optim"
]
GROUPING_KEYS = ("weight_decay", "decay_norm_and_bias", "lr_multipliers", "layer_decay")


def test_every_builtin_optimizer_has_a_torch_class_to_compare_with():
    assert sorted(TORCH_CLASSES) == BUILTIN_NAMES


def yaml_defaults(name: str) -> dict:
    path = paths.config_dir() / "optimizer" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path))


def by_hand(model: nn.Module, node: dict) -> torch.optim.Optimizer:
    """The torch.optim class of ``node`` with the groups trainkit should make, written out."""
    hyper = {k: v for k, v in node.items() if k != "name" and k not in GROUPING_KEYS}
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    weight_decay, multipliers = node["weight_decay"], node["lr_multipliers"] or {}
    decay_all = node["decay_norm_and_bias"]
    groups = {None: ([], [])} | {pattern: ([], []) for pattern in multipliers}
    for name, p in model.named_parameters():
        pattern = next((pt for pt in multipliers if fnmatch.fnmatchcase(name, pt)), None)
        groups[pattern][0 if decay_all or p.ndim > 1 else 1].append(p)
    param_groups = []
    for pattern, (decay, no_decay) in groups.items():
        lr = {} if pattern is None else {"lr": hyper["lr"] * multipliers[pattern]}
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                param_groups.append({"params": params, "weight_decay": wd, **lr})
    return TORCH_CLASSES[node["name"]](param_groups, **hyper)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"weight_decay": 0.05, "lr_multipliers": {"5.*": 3.0, "0.*": 0.5}},
    ],
    ids=["defaults", "decay-and-multipliers"],
)
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builds_from_yaml_and_matches_torch_configured_by_hand(name, changes):
    node = yaml_defaults(name) | changes
    model = small_convnet()
    reference = copy.deepcopy(model)
    initial = copy.deepcopy(model)
    optimizer = OPTIMIZERS.build(node, model=model)
    assert type(optimizer) is TORCH_CLASSES[name]
    train_three_steps(model, optimizer)
    train_three_steps(reference, by_hand(reference, node))
    for (key, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), key
    assert_all_moved(model, initial)


def groups_by_parameter(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    """id(parameter) -> its group, checking that no parameter is in two groups."""
    found = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in found, "a parameter is in two groups"
            found[id(p)] = group
    return found


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_biases_and_norm_weights_are_not_decayed(name):
    model = small_convnet()
    optimizer = OPTIMIZERS.build({"name": name, "weight_decay": 0.25}, model=model)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.25 and no_decay["weight_decay"] == 0.0
    assert ids(decay["params"]) == ids(p for p in model.parameters() if p.ndim > 1)
    assert ids(no_decay["params"]) == ids(p for p in model.parameters() if p.ndim <= 1)


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_decay_norm_and_bias_puts_everything_in_the_decayed_group(name):
    model = small_convnet()
    node = {"name": name, "weight_decay": 0.25, "decay_norm_and_bias": True}
    (group,) = OPTIMIZERS.build(node, model=model).param_groups
    assert group["weight_decay"] == 0.25
    assert ids(group["params"]) == ids(model.parameters())


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_lr_multipliers_set_the_lr_of_matching_parameters(name):
    model = small_convnet()
    base = 0.004
    multipliers = {"5.*": 10.0, "0.*": 0.1, "*.bias": 2.0}  # "0.bias" takes 0.1: first wins
    node = {"name": name, "lr": base, "weight_decay": 0.01, "lr_multipliers": multipliers}
    optimizer = OPTIMIZERS.build(node, model=model)
    assert optimizer.param_groups[0]["lr"] == base  # what the runner logs as "the" lr
    groups = groups_by_parameter(optimizer)
    expected_lr = {
        "0.weight": base * 0.1,
        "0.bias": base * 0.1,
        "1.weight": base,
        "1.bias": base * 2.0,
        "3.weight": base,
        "3.bias": base * 2.0,
        "5.weight": base * 10.0,
        "5.bias": base * 10.0,
    }
    named = dict(model.named_parameters())
    assert set(groups) == ids(named.values())  # every parameter exactly once
    for key, p in named.items():
        assert groups[id(p)]["lr"] == pytest.approx(expected_lr[key], rel=1e-12), key
        assert groups[id(p)]["weight_decay"] == (0.01 if p.ndim > 1 else 0.0), key


def test_lr_multipliers_from_an_omegaconf_node():
    model = small_convnet()
    node = OmegaConf.create({"name": "adamw", "lr": 0.1, "lr_multipliers": {"5.*": 0.5}})
    lrs = {
        id(p): g["lr"]
        for g in OPTIMIZERS.build(node, model=model).param_groups
        for p in g["params"]
    }
    assert lrs[id(model[5].weight)] == lrs[id(model[5].bias)] == 0.05
    assert lrs[id(model[0].weight)] == 0.1


def test_lr_multiplier_pattern_may_match_only_frozen_parameters():
    model = small_convnet()
    model[0].requires_grad_(False)
    optimizer = sgd(model, lr=0.1, lr_multipliers={"0.*": 0.1})
    groups = groups_by_parameter(optimizer)
    assert len(groups) == 7  # every parameter, the frozen ones at their own lr
    assert groups[id(model[0].weight)]["lr"] == pytest.approx(0.01)


def test_layer_decay_multiplies_each_layer_down_from_the_head():
    # small_convnet's layers, input to head: 0 with its BatchNorm 1, then 3, then 5.
    model = small_convnet()
    node = {"name": "sgd", "lr": 0.1, "layer_decay": 0.5, "lr_multipliers": {"1.*": 2.0}}
    groups = groups_by_parameter(OPTIMIZERS.build(node, model=model))
    expected = {"5": 0.1, "3": 0.1 * 0.5, "1": 0.1 * 0.25 * 2.0, "0": 0.1 * 0.25}
    for name, p in model.named_parameters():
        assert groups[id(p)]["lr"] == pytest.approx(expected[name.split(".")[0]]), name


def test_layers_count_the_parts_of_a_wrapped_model_and_put_its_own_tensors_first():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_convnet()

    assert set(layers(Wrapped()).values()) == {0, 1, 2}

    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.zeros(3))
            self.body = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

    assert layers(WithToken()) == {
        "token": 0, "body.weight": 1, "body.bias": 1, "head.weight": 2, "head.bias": 2,
    }  # fmt: skip


def build_model(name: str, input_shape: tuple[int, ...], **params) -> nn.Module:
    return MODELS.build({"name": name, **params}, "model", num_classes=3, input_shape=input_shape)


def lrs_by_name(model: nn.Module, node: dict) -> dict[str, float]:
    groups = groups_by_parameter(OPTIMIZERS.build(node, model=model))
    return {name: groups[id(p)]["lr"] for name, p in model.named_parameters()}


def tiny_vit(num_layers: int = 12) -> nn.Module:
    return build_model(
        "vit", (3, 8, 8), patch_size=4, hidden_dim=8, num_heads=2, mlp_dim=8, num_layers=num_layers
    )


def test_layer_decay_gives_each_vit_encoder_block_its_own_lr():
    model = tiny_vit()
    # class token, patch embedding, position embedding, 12 blocks (the last with the final
    # LayerNorm), head.
    assert len(set(layers(model).values())) == 3 + 12 + 1
    model.conv_proj.requires_grad_(False)  # frozen parameters are decayed all the same
    node = {"name": "adamw", "lr": 0.01, "layer_decay": 0.75, "lr_multipliers": {"heads.*": 2.0}}
    lr = lrs_by_name(model, node)
    block = "encoder.layers.encoder_layer_{}.mlp.0.weight".format
    assert lr[block(2)] / lr[block(3)] == pytest.approx(0.75)
    for k in range(12):  # block k is 12 - k layers below the head
        assert lr[block(k)] == pytest.approx(0.01 * 0.75 ** (12 - k)), k
    assert lr["encoder.ln.weight"] == pytest.approx(lr[block(11)])
    assert lr["encoder.pos_embedding"] == pytest.approx(0.01 * 0.75**13)
    assert lr["conv_proj.weight"] == pytest.approx(0.01 * 0.75**14)
    assert lr["class_token"] == pytest.approx(0.01 * 0.75**15)
    assert lr["heads.head.weight"] == lr["heads.head.bias"] == pytest.approx(0.01 * 2.0)


def test_layer_decay_gives_each_resnet_block_its_own_lr():
    model = build_model("resnet_cifar", (3, 8, 8), depth=8, width=4)  # three blocks
    lr = lrs_by_name(model, {"name": "sgd", "lr": 0.1, "layer_decay": 0.5})
    assert lr["classifier.weight"] == lr["classifier.bias"] == 0.1
    for k in range(3):
        for name in (f"stages.{k}.conv1.weight", f"stages.{k}.bn2.bias"):
            assert lr[name] == pytest.approx(0.1 * 0.5 ** (3 - k)), name
    # The stem's conv and its norm are one layer.
    assert lr["stem.0.weight"] == lr["stem.1.weight"] == pytest.approx(0.1 * 0.5**4)


def test_layers_of_torchvision_resnet18_are_its_stem_blocks_and_head():
    depth = layers(build_model("resnet18", (3, 8, 8), stem="cifar"))
    assert depth["conv1.weight"] == depth["bn1.weight"] == depth["bn1.bias"] == 0
    blocks = [f"layer{stage}.{block}" for stage in (1, 2, 3, 4) for block in (0, 1)]
    for k, block in enumerate(blocks, start=1):
        inside = {layer for name, layer in depth.items() if name.startswith(f"{block}.")}
        assert inside == {k}, block
    assert depth["fc.weight"] == depth["fc.bias"] == 9


def test_layer_decay_out_of_range_is_one_line():
    with pytest.raises(UserError, match=r"optimizer.layer_decay=1.5 is out of range"):
        OPTIMIZERS.build({"name": "adam", "layer_decay": 1.5}, model=small_convnet())


def test_unmatched_lr_multiplier_pattern_names_real_parameters():
    with pytest.raises(UserError) as error:
        OPTIMIZERS.build({"name": "adam", "lr_multipliers": {"x.*": 2.0}}, model=small_convnet())
    assert str(error.value) == (
        "optimizer.lr_multipliers: pattern 'x.*' matches no parameter; "
        "parameter names look like: 0.weight, 0.bias, 1.weight, 1.bias ..."
    )


@pytest.mark.parametrize(
    ("factor", "message"),
    [
        (0, "optimizer.lr_multipliers['5.*']=0 is out of range: it must be > 0"),
        (-1.5, "optimizer.lr_multipliers['5.*']=-1.5 is out of range: it must be > 0"),
        ("big", "optimizer.lr_multipliers['5.*']='big' has the wrong type: it must be a number"),
    ],
)
def test_bad_lr_multiplier_factor(factor, message):
    node = {"name": "rmsprop", "lr_multipliers": {"5.*": factor}}
    with pytest.raises(UserError) as error:
        OPTIMIZERS.build(node, model=small_convnet())
    assert str(error.value) == message


@pytest.mark.parametrize(
    "params", [{"momentum": 0.0}, {"momentum": 0.9, "dampening": 0.1}], ids=str
)
def test_nesterov_needs_momentum_and_no_dampening(params):
    node = {"name": "sgd", "nesterov": True, **params}
    with pytest.raises(UserError, match=r"^optimizer\.nesterov=true needs momentum > 0"):
        OPTIMIZERS.build(node, model=small_convnet())
    # Without nesterov the same settings are fine.
    OPTIMIZERS.build({**node, "nesterov": False}, model=small_convnet())
