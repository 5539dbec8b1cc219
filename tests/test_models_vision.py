"""torchvision's ResNets (stems, channels, weights) and the vision transformer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models

from trainkit.data import digits
from trainkit.errors import UserError
from trainkit.registry import MODELS, load_components

load_components()


def build(name: str, input_shape, num_classes: int = 10, **params):
    return MODELS.build(
        {"name": name, **params}, "model", num_classes=num_classes, input_shape=input_shape
    )


@pytest.fixture
def one_thread():
    """Small models train faster on one thread, and the machine may be shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- ResNet-18/34/50 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stem", "channels"),
    [("resnet18", stem, channels) for stem in ("imagenet", "cifar") for channels in (1, 3)]
    + [("resnet34", "imagenet", 1), ("resnet50", "cifar", 3)],
)
def test_resnet_output_shape(name, stem, channels):
    # 16x16 inputs keep ResNet-50 cheap on a CPU; the stages work on any size.
    model = build(name, (channels, 16, 16), num_classes=7, stem=stem).eval()
    assert model(torch.randn(1, channels, 16, 16)).shape == (1, 7)
    assert model.conv1.in_channels == channels


def test_cifar_stem_keeps_the_resolution_into_the_first_stage():
    imagenet, cifar = (build("resnet18", (3, 32, 32), stem=s) for s in ("imagenet", "cifar"))
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    x = torch.randn(1, 3, 32, 32)
    stem_output = {
        stem: model.maxpool(model.relu(model.bn1(model.conv1(x)))).shape[-1]
        for stem, model in (("imagenet", imagenet), ("cifar", cifar))
    }
    assert stem_output == {"imagenet": 8, "cifar": 32}


def test_resnet_dropout_keeps_torchvision_key_names():
    model = build("resnet18", (3, 32, 32), num_classes=1000, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    assert model.state_dict().keys() == models.resnet18().state_dict().keys()


def test_zero_init_residual_starts_every_block_as_the_identity():
    for name, norm in (("resnet18", "bn2"), ("resnet50", "bn3")):
        model = build(name, (3, 32, 32), zero_init_residual=True, init="kaiming_normal")
        blocks = [m for m in model.modules() if hasattr(m, norm)]
        assert blocks and all(torch.all(getattr(b, norm).weight == 0) for b in blocks)


def test_resnet_needs_image_inputs():
    with pytest.raises(UserError, match="^model resnet18 needs image inputs"):
        build("resnet18", (64,))


# --- weights -------------------------------------------------------------------------------


def _save(state, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_imagenet_weights_not_in_the_cache_is_one_line_saying_where_to_put_them(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError) as error:
        build("resnet50", (3, 224, 224), weights="imagenet")
    cache = tmp_path / "hub" / "checkpoints"
    assert str(error.value) == (
        f"model.weights=imagenet: {cache}/resnet50-0676ba61.pth is missing and trainkit does "
        "not download weights; put resnet50-0676ba61.pth "
        f"(from https://download.pytorch.org/models/resnet50-0676ba61.pth) in {cache}"
    )


def test_a_checkpoints_model_is_built_without_the_weights_its_run_started_from(tmp_path):
    """eval, predict and export load the checkpoint's weights: the file model.weights names
    (ImageNet's, in torch hub's cache) need not be on the machine that evaluates."""
    from trainkit import config
    from trainkit.build import build as build_parts

    overrides = ["data=synthetic", "data.num_samples=200", "data.shape=[3,8,8]", "model=resnet18",
                 "model.stem=cifar", f"model.weights={tmp_path / 'gone.pth'}"]  # fmt: skip
    cfg = config.compose(config.prepare(overrides))
    assert build_parts(cfg, "evaluate").model.fc.out_features == 10
    with pytest.raises(UserError, match="gone.pth: no such file"):
        build_parts(cfg, "train")


def test_imagenet_weights_load_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    reference = models.resnet18()
    _save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    model = build("resnet18", (3, 64, 64), num_classes=10, weights="imagenet")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 10  # the classifier is new


def test_local_weights_load_except_a_reshaped_stem_and_classifier(tmp_path):
    reference = models.resnet18()
    path = _save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = build("resnet18", (1, 32, 32), weights=str(path), stem="cifar")
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert torch.equal(model.bn1.running_var, reference.bn1.running_var)
    assert model.conv1.weight.shape == (64, 1, 3, 3) and model.fc.out_features == 10


def test_weights_from_a_trainkit_checkpoint(tmp_path):
    trained = build("resnet18", (3, 32, 32), stem="cifar", num_classes=5, dropout=0.2)
    path = _save({"model": trained.state_dict(), "config": {}}, tmp_path / "best.pt")
    model = build("resnet18", (3, 32, 32), stem="cifar", num_classes=5, weights=str(path))
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", r"model\.weights=\S+nowhere\.pth: no such file; give a \.pth state dict"),
        ("other model", r"model\.weights=\S+: not a resnet18 state dict \(layer1\.2\.conv1\.w"),
        ("not torch", r"model\.weights=\S+: cannot read \S+junk\.pth"),
        ("init", r"model\.init re-initializes the weights that model\.weights=\S+ loads"),
        ("zero init", r"model\.zero_init_residual re-initializes the weights"),
    ],
)
def test_weights_errors(setup, message, tmp_path):
    path = tmp_path / "weights.pth"
    params = {}
    if setup == "missing":
        path = tmp_path / "nowhere.pth"
    elif setup == "other model":
        _save(models.resnet34().state_dict(), path)  # more blocks per stage
    elif setup == "not torch":
        path = tmp_path / "junk.pth"
        path.write_text("not a checkpoint")
    else:
        _save(models.resnet18().state_dict(), path)
        params = {"init": "kaiming_normal"} if setup == "init" else {"zero_init_residual": True}
    with pytest.raises(UserError, match=f"^{message}") as error:
        build("resnet18", (3, 32, 32), weights=str(path), **params)
    assert "\n" not in str(error.value)


# --- ViT -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "patch_size"), [((1, 8, 8), 2), ((3, 8, 8), 4), ((3, 32, 32), 4), ((1, 28, 28), 7)]
)
def test_vit_output_shape(shape, patch_size):
    model = build("vit", shape, patch_size=patch_size, hidden_dim=24, num_layers=2, num_heads=3)
    assert model.eval()(torch.randn(2, *shape)).shape == (2, 10)
    assert model.conv_proj.in_channels == shape[0]


def test_vit_defaults_suit_cifar():
    model = build("vit", (3, 32, 32)).eval()
    assert model.seq_length == 64 + 1  # 8x8 patches of 4x4 pixels and the class token
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("shape", "params", "message"),
    [
        ((3, 32, 32), {"patch_size": 5}, r"model\.patch_size=5 does not divide the image size 32"),
        ((3, 32, 32), {"num_heads": 5}, r"model\.hidden_dim=192 is not divisible by model\.num"),
        ((64,), {}, r"model vit needs image inputs"),
        ((1, 8, 40), {}, r"model vit needs square images; the data gives 8x40"),
    ],
)
def test_vit_checks(shape, params, message):
    with pytest.raises(UserError, match=f"^{message}") as error:
        build("vit", shape, **params)
    assert "\n" not in str(error.value)


def test_vit_learns_digits_well_above_chance(one_thread):
    torch.manual_seed(0)
    splits = digits()
    model = build("vit", (1, 8, 8), patch_size=2, hidden_dim=32, num_layers=2, num_heads=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    x, y = splits.train.inputs, splits.train.targets
    for _ in range(8):
        model.train()
        for rows in torch.randperm(len(y)).split(32):
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        predictions = model.eval()(splits.test.inputs).argmax(1)
    accuracy = (predictions == splits.test.targets).float().mean().item()
    assert accuracy > 0.6, accuracy  # chance is 0.1
