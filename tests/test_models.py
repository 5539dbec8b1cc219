"""Models: shapes, input checks, initialization schemes and normalization layers."""

from __future__ import annotations

import math
import typing

import pytest
import torch
from torch import nn

from trainkit.errors import UserError
from trainkit.models import Init, group_count, initialize
from trainkit.registry import MODELS, load_components

load_components()

SCHEMES = typing.get_args(Init)


def build(name: str, input_shape, num_classes: int = 10, **params):
    return MODELS.build(
        {"name": name, **params}, "model", num_classes=num_classes, input_shape=input_shape
    )


# --- shapes and input checks ---------------------------------------------------------------


@pytest.mark.parametrize("depth", [8, 20])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_resnet_output_shape(depth, shape):
    model = build("resnet_cifar", shape, depth=depth, width=4).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_mlp_output_shape_on_flat_and_image_inputs():
    assert build("mlp", (20,), num_classes=3, hidden=[8])(torch.randn(4, 20)).shape == (4, 3)
    assert build("mlp", (1, 8, 8), hidden=[])(torch.randn(4, 1, 8, 8)).shape == (4, 10)


@pytest.mark.parametrize(
    ("depth", "message"),
    [
        (9, "is not 6n\\+2; use 8, 14"),
        (21, "is not 6n\\+2"),
        (7, "is out of range: it must be >= 8"),
        (2, "is out of range: it must be >= 8"),
    ],
)
def test_resnet_depth_must_be_6n_plus_2(depth, message):
    with pytest.raises(UserError, match=rf"model\.depth={depth} {message}"):
        build("resnet_cifar", (1, 8, 8), depth=depth)


def test_resnet_needs_image_inputs():
    with pytest.raises(UserError, match="needs image inputs"):
        build("resnet_cifar", (64,))


@pytest.mark.parametrize(("key", "value"), [("init", "he"), ("norm", "batchnorm")])
def test_bad_init_or_norm_fails_validation(key, value):
    with pytest.raises(UserError, match=rf"^model\.{key}='{value}' is not a choice; "):
        MODELS.check({"name": "resnet_cifar", key: value})
    with pytest.raises(UserError, match=rf"^model\.{key}="):
        MODELS.check({"name": "mlp", key: value})


# --- initialization ------------------------------------------------------------------------


def _layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "default"])
def test_every_scheme_zeroes_biases_and_resets_norms(scheme):
    for model in (
        build("resnet_cifar", (3, 8, 8), width=4, init=scheme),
        build("mlp", (16,), hidden=[8, 8], norm="layer", init=scheme),
    ):
        for layer in _layers(model):
            assert layer.bias is None or torch.count_nonzero(layer.bias) == 0
        for norm in model.modules():
            if isinstance(norm, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_default_keeps_torch_initialization():
    torch.manual_seed(0)
    reference = nn.Linear(100, 50)
    torch.manual_seed(0)
    layer = initialize(nn.Linear(100, 50), "default")
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    assert torch.count_nonzero(layer.bias) > 0  # torch's own bias init, untouched


FAN_IN, FAN_OUT = 512, 384


def _linear(scheme: str) -> torch.Tensor:
    torch.manual_seed(0)
    return initialize(nn.Sequential(nn.Linear(FAN_IN, FAN_OUT)), scheme)[0].weight.detach()


def test_xavier_uniform():
    w = _linear("xavier_uniform")
    bound = math.sqrt(6 / (FAN_IN + FAN_OUT))
    assert w.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)


def test_xavier_normal():
    assert _linear("xavier_normal").std().item() == pytest.approx(
        math.sqrt(2 / (FAN_IN + FAN_OUT)), rel=0.03
    )


def test_kaiming_normal_uses_fan_in_for_linear():
    assert _linear("kaiming_normal").std().item() == pytest.approx(math.sqrt(2 / FAN_IN), rel=0.03)


def test_kaiming_uniform_uses_fan_in_for_linear():
    w = _linear("kaiming_uniform")
    bound = math.sqrt(6 / FAN_IN)
    assert w.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)


@pytest.mark.parametrize("scheme", ["kaiming_normal", "kaiming_uniform"])
def test_kaiming_uses_fan_out_for_convolutions(scheme):
    torch.manual_seed(0)
    conv = initialize(nn.Sequential(nn.Conv2d(64, 128, 3)), scheme)[0]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.03)


def test_orthogonal():
    w = _linear("orthogonal")  # 384 x 512: the rows are orthonormal
    assert torch.allclose(w @ w.T, torch.eye(FAN_OUT), atol=1e-4)


def test_trunc_normal():
    w = _linear("trunc_normal")
    assert w.abs().max() <= 0.04
    # N(0, 0.02) cut at 2 std has std 0.02 * 0.88.
    assert w.std().item() == pytest.approx(0.02 * 0.8796, rel=0.03)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_seeds_give_different_parameters(scheme):
    torch.manual_seed(1)
    first = build("resnet_cifar", (1, 8, 8), width=4, init=scheme).stem[0].weight
    torch.manual_seed(2)
    second = build("resnet_cifar", (1, 8, 8), width=4, init=scheme).stem[0].weight
    assert not torch.equal(first, second)


# --- normalization layers ------------------------------------------------------------------


def test_group_count_divides_and_caps():
    assert [group_count(c) for c in (4, 16, 32, 64, 256, 48, 3)] == [1, 4, 8, 16, 32, 12, 1]
    for channels in range(1, 300):
        assert channels % group_count(channels) == 0


def _train_step(model, shape):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, *shape)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("norm", "check"),
    [
        ("batch", lambda m: isinstance(m, nn.BatchNorm2d)),
        ("group", lambda m: isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels),
        ("layer", lambda m: isinstance(m, nn.GroupNorm) and m.num_groups == 1),
        ("instance", lambda m: isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels),
    ],
)
def test_resnet_norm_layers(norm, check):
    model = build("resnet_cifar", (3, 8, 8), depth=8, width=8, norm=norm)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert norms and all(check(m) for m in norms)
    assert len(norms) == 2 * 3 + 1 + 2  # two per block, the stem, two downsampling shortcuts
    _train_step(model, (3, 8, 8))


@pytest.mark.parametrize(
    ("norm", "layer_type"), [("none", None), ("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)]
)
def test_mlp_norm_layers(norm, layer_type):
    model = build("mlp", (12,), hidden=[16, 8], norm=norm)
    found = [m for m in model if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))]
    if layer_type is None:
        assert not found
    else:
        assert [type(m) for m in found] == [layer_type, layer_type]
        assert [m.weight.shape[0] for m in found] == [16, 8]
        # Right after each hidden Linear.
        for index, module in enumerate(model):
            if isinstance(module, layer_type):
                assert isinstance(model[index - 1], nn.Linear)
    _train_step(model, (12,))


# --- the sequence reader ---------------------------------------------------------------------


def test_conv_transformer_gives_one_score_per_class_every_two_columns():
    from trainkit.registry import MODELS

    model = MODELS.build(
        {"name": "conv_transformer"}, "model", num_classes=11, input_shape=(1, 8, 40)
    )
    assert model(torch.randn(3, 1, 8, 40)).shape == (3, 20, 11)


def test_conv_transformer_errors():
    from trainkit.errors import UserError
    from trainkit.registry import MODELS

    with pytest.raises(UserError, match="model conv_transformer reads images"):
        MODELS.build({"name": "conv_transformer"}, "model", num_classes=11, input_shape=(30,))
    with pytest.raises(UserError, match="model.embed_dim=30 is not divisible by model.num_heads=4"):
        MODELS.build(
            {"name": "conv_transformer", "embed_dim": 30},
            "model",
            num_classes=11,
            input_shape=(1, 8, 40),
        )
