"""ResNets: the CIFAR-style ResNet-(6n+2) for small images, and torchvision's ResNet-18/34/50
with a choice of stem and optional ImageNet weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from trainkit import checkpoint
from trainkit.errors import UserError
from trainkit.models.layers import Init, Norm2d, initialize, norm2d
from trainkit.registry import MODELS, Form, PositiveInt, Probability, Range
from trainkit.reporting import log


def _need_image(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise UserError(
            f"model {name} needs image inputs (channels, height, width); "
            f"the data gives samples of shape {tuple(input_shape)}: use model=mlp"
        )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al., 2016), post-activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
        drop_path: float = 0.0,
    ):
        super().__init__()
        # Stochastic depth: drop the whole residual branch of a sample with this probability.
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                norm(out_channels),
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """The CIFAR ResNet: a 3x3 stem (no early downsampling, for small images), three stages
    of ``blocks_per_stage`` basic blocks at widths w, 2w, 4w, global pooling, a classifier."""

    def __init__(
        self,
        in_channels,
        num_classes,
        blocks_per_stage,
        width,
        dropout,
        norm=nn.BatchNorm2d,
        drop_path=0.0,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            norm(width),
            nn.ReLU(inplace=True),
        )
        layers, channels = [], width
        blocks = 3 * blocks_per_stage
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                # The drop rate grows linearly with depth (Huang et al. 2016), up to drop_path.
                rate = drop_path * len(layers) / max(blocks - 1, 1)
                layers.append(BasicBlock(channels, stage_width, stride, norm, rate))
                channels = stage_width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.classifier(self.dropout(x))


# Three stages of n blocks of two layers each, plus the stem and the head.
CifarDepth = Annotated[
    int,
    Range(ge=8),
    Form("6n+2", lambda depth: (depth - 2) % 6 == 0, "use 8, 14, 20, 32, 44, 56 or 110"),
]


@MODELS.register("resnet_cifar")
def resnet_cifar(
    num_classes: int,
    input_shape: tuple[int, ...],
    depth: CifarDepth = 20,
    width: PositiveInt = 16,
    dropout: Probability = 0.0,
    init: Init = "default",
    norm: Norm2d = "batch",
    drop_path: Probability = 0.0,
) -> nn.Module:
    """ResNet-(6n+2) for small images: depth 8, 14, 20, 32, 44, 56, 110."""
    _need_image("resnet_cifar", input_shape)
    model = ResNetCifar(
        input_shape[0], num_classes, (depth - 2) // 6, width, dropout, norm2d(norm), drop_path
    )
    return initialize(model, init)


# --- torchvision's ResNets -----------------------------------------------------------------

Stem = Literal["imagenet", "cifar"]


def check_weights(node: dict[str, Any]) -> None:
    """UserError unless the file a torchvision ResNet's ``model.weights`` names is there:
    checked with the config, before any data is read or directory made."""
    if node.get("weights") is not None and node.get("name") in TORCHVISION_RESNETS:
        weights_file(node["name"], str(node["weights"]))


def weights_file(name: str, weights: str) -> Path:
    """The file ``model.weights`` names: "imagenet" (torchvision's IMAGENET1K_V1 file, from
    torch hub's cache only) or a path to a .pth state dict or trainkit checkpoint."""
    from torchvision import models

    if weights == "imagenet":
        url = models.get_model_weights(name).IMAGENET1K_V1.url
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        path = cache / Path(url).name
        if not path.is_file():
            # Never downloaded here: on a machine without network that would hang or fail
            # half-way through a run's setup.
            raise UserError(
                f"model.weights=imagenet: {path} is missing and trainkit does not download "
                f"weights; put {path.name} (from {url}) in {cache}"
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(
                f"model.weights={weights}: no such file; give a .pth state dict (relative to "
                "the working directory), imagenet, or null for random weights"
            )
    return path


def _read_weights(name: str, weights: str) -> dict[str, Any]:
    """The state dict in the file ``model.weights`` names (see ``weights_file``)."""
    path = weights_file(name, weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, or one that needs arbitrary pickles
        raise UserError(
            f"model.weights={weights}: cannot read {path} as a state dict "
            f"({type(error).__name__}); save one with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a trainkit checkpoint (best.pt, last.pt)
    if not isinstance(state, dict):
        raise UserError(f"model.weights={weights}: {path} holds no state dict")
    return state


def _load_weights(model: nn.Module, name: str, weights: str, state: dict[str, Any]) -> None:
    """Load ``state`` into ``model``, except a first conv or classifier whose shape differs
    (another stem, channel count or number of classes): those layers keep their new weights
    (the same loading as ``init_from``), and the run says so."""
    own = model.state_dict()
    reshaped = {key for key, value in state.items() if key in own and own[key].shape != value.shape}
    misfits = sorted(key for key in reshaped if key.split(".")[0] not in ("conv1", "fc"))
    problems = [f"{key} has another shape" for key in misfits]
    problems += [f"{key} is missing" for key in own if key not in state]
    problems += [f"{key} is not a {name} weight" for key in state if key not in own]
    if problems:
        raise UserError(
            f"model.weights={weights}: not a {name} state dict ({problems[0]}); "
            f"use weights saved from torchvision's {name} or a trainkit {name} run"
        )
    report = checkpoint.load_matching(model, state)
    fresh = report["reinitialized"]
    log.info(
        f"model.weights={weights}: loaded {len(report['loaded'])} tensors"
        + (f"; started fresh (another shape): {', '.join(fresh)}" if fresh else "")
    )


def _torchvision_resnet(name: str, summary: str):
    """The builder of torchvision's ``name``, whose options every ResNet here shares."""

    def build(
        num_classes: int,
        input_shape: tuple[int, ...],
        stem: Stem = "imagenet",
        weights: str | None = None,
        dropout: Probability = 0.0,
        init: Init = "default",
        zero_init_residual: bool = False,
    ) -> nn.Module:
        from torchvision import models

        _need_image(name, input_shape)
        if weights is not None and (init != "default" or zero_init_residual):
            key = "init" if init != "default" else "zero_init_residual"
            raise UserError(
                f"model.{key} re-initializes the weights that model.weights={weights} loads; "
                f"leave model.{key} at its default"
            )
        state = _read_weights(name, weights) if weights is not None else None
        model = models.get_model(name, weights=None)
        channels = input_shape[0]
        if stem == "cifar":
            # A 3x3 stride-1 first conv and no max-pool: 32x32 images keep their resolution
            # into the first stage (the ResNet-18 that reaches about 95% on CIFAR-10).
            model.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif channels != 3:
            model.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
        # Dropout after the pooling, i.e. before the classifier; it has no parameters, so the
        # state dict keeps torchvision's key names and pretrained files load as they are.
        model.avgpool = nn.Sequential(model.avgpool, nn.Dropout(dropout))
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        if state is not None:
            _load_weights(model, name, weights, state)
            return model
        initialize(model, init)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity
            # (Goyal et al. 2017): helps large-batch training.
            for module in model.modules():
                if isinstance(module, models.resnet.Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, models.resnet.BasicBlock):
                    nn.init.zeros_(module.bn2.weight)
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"{summary} ``stem``: imagenet (7x7 stride-2 conv and max-pool, for 224x224) or "
        "cifar (3x3 stride-1, no max-pool, for 32x32). ``weights``: null, imagenet "
        "(torchvision's IMAGENET1K_V1 from torch hub's cache) or a .pth path."
    )
    return build


TORCHVISION_RESNETS = {
    "resnet18": "torchvision's ResNet-18 (11.7M parameters).",
    "resnet34": "torchvision's ResNet-34 (21.8M parameters).",
    "resnet50": "torchvision's ResNet-50 (25.6M parameters, bottleneck blocks).",
}
for _name, _summary in TORCHVISION_RESNETS.items():
    MODELS.register(_name)(_torchvision_resnet(_name, _summary))
