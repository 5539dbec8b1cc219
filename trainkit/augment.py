"""Train-time augmentation pipelines (torchvision.transforms.v2), applied per sample.

Evaluation never sees these: the val and test splits only get the data set's
deterministic preprocessing (normalization), done once when the data is loaded.

Inputs arrive already normalized (float, mean 0 and std 1 per channel over the train split),
so padding fills with 0, which is the train split's mean pixel, not black. In-memory data sets
hand over images of their own size; ``imagefolder`` hands over the whole image with its shorter
side at ``data.resize`` pixels and center-crops the result to ``data.image_size``, so a preset
with a random crop (``imagenet``, ``cifar``, ``randaugment``) picks the training view there.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from torch import nn
from torchvision.transforms import v2

from trainkit.errors import UserError
from trainkit.registry import AUGMENTATIONS, NonNegativeFloat, NonNegativeInt, Range

Transform = Callable[[torch.Tensor], torch.Tensor]
FlipProbability = Annotated[float, Range(ge=0, le=1)]


def _need_image(name: str, image_size: tuple[int, int] | None) -> tuple[int, int]:
    if image_size is None:
        raise UserError(
            f"augmentation {name} needs image inputs (channels, height, width); "
            "this data set gives flat samples: use augmentation=none"
        )
    return tuple(image_size)


def _compose(steps: list[Callable]) -> Transform | None:
    """The steps in order, or None (no transform) when every step is switched off."""
    return v2.Compose(steps) if steps else None


# --- presets -------------------------------------------------------------------------------


@AUGMENTATIONS.register("none")
def none() -> Transform | None:
    return None


@AUGMENTATIONS.register("basic")
def basic(
    image_size: tuple[int, int] | None,
    shift: NonNegativeInt = 2,
    flip: FlipProbability = 0.5,
) -> Transform | None:
    """Random shifts of up to ``shift`` pixels and horizontal flips with probability ``flip``."""
    size = _need_image("basic", image_size)
    steps: list[Callable] = []
    if shift:
        steps.append(v2.RandomCrop(size, padding=shift))
    if flip:
        steps.append(v2.RandomHorizontalFlip(flip))
    return _compose(steps)


@AUGMENTATIONS.register("cifar")
def cifar(
    image_size: tuple[int, int] | None,
    padding: NonNegativeInt = 4,
    padding_mode: Literal["constant", "edge", "reflect", "symmetric"] = "constant",
    flip: FlipProbability = 0.5,
) -> Transform | None:
    """The standard CIFAR recipe (He et al. 2016): pad 4, random 32x32 crop, horizontal flip."""
    size = _need_image("cifar", image_size)
    steps: list[Callable] = []
    if padding:
        steps.append(v2.RandomCrop(size, padding=padding, padding_mode=padding_mode))
    if flip:
        steps.append(v2.RandomHorizontalFlip(flip))
    return _compose(steps)


@AUGMENTATIONS.register("digits")
def digits(
    image_size: tuple[int, int] | None,
    shift: NonNegativeInt = 1,
    rotation: NonNegativeFloat = 10.0,
) -> Transform | None:
    """Small shifts and rotations. No flips: a mirrored 6 is a 9 and a mirrored 2 is no digit."""
    size = _need_image("digits", image_size)
    steps: list[Callable] = []
    if shift:
        steps.append(v2.RandomCrop(size, padding=shift))
    if rotation:
        steps.append(v2.RandomRotation(rotation))
    return _compose(steps)


@AUGMENTATIONS.register("imagenet")
def imagenet(
    image_size: tuple[int, int] | None,
    min_scale: Annotated[float, Range(gt=0, le=1)] = 0.08,
    flip: FlipProbability = 0.5,
) -> Transform | None:
    """torchvision's ImageNet reference training: a random crop of ``min_scale`` to all of the
    image's area and aspect ratio 3/4 to 4/3, resized to the image size (Szegedy et al. 2015),
    and horizontal flips."""
    size = _need_image("imagenet", image_size)
    steps: list[Callable] = [v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip(flip))
    return _compose(steps)


@AUGMENTATIONS.register("randaugment")
def randaugment(
    image_size: tuple[int, int] | None,
    num_ops: NonNegativeInt = 2,
    magnitude: Annotated[int, Range(ge=0, le=30)] = 9,
    padding: NonNegativeInt = 4,
    flip: FlipProbability = 0.5,
) -> Transform | None:
    """The CIFAR crop and flip, then RandAugment (Cubuk et al. 2020): ``num_ops`` operations
    drawn at random per image (shear, translate, rotate, colour, contrast, posterize, ...) of
    strength ``magnitude`` on torchvision's 0-30 scale, as when training ViTs on small data.

    RandAugment works on pixels in [0, 1] and clamps to it, which would wipe out everything
    below the mean of our normalized images, so it runs inside ``UnitRange``: on each image
    rescaled by its own min and max, then mapped back. The geometric operations are exact;
    the photometric ones (brightness, solarize, posterize, ...) see the image as if its
    contrast had been stretched to black-to-white, a close stand-in for its raw pixels.
    """
    size = _need_image("randaugment", image_size)
    steps: list[Callable] = []
    if padding:
        steps.append(v2.RandomCrop(size, padding=padding))
    if flip:
        steps.append(v2.RandomHorizontalFlip(flip))
    if num_ops:
        steps.append(UnitRange(v2.RandAugment(num_ops=num_ops, magnitude=magnitude)))
    return _compose(steps)


# --- pipeline: an ordered list of torchvision transforms from the config ---------------------

STEPS: dict[str, type] = {
    name: getattr(v2, name)
    for name in (
        "RandomCrop",
        "RandomHorizontalFlip",
        "RandomVerticalFlip",
        "ColorJitter",
        "RandomRotation",
        "RandomAffine",
        "RandomErasing",
        "RandAugment",
        "TrivialAugmentWide",
        "AutoAugment",
        "Normalize",
        "GaussianBlur",
    )
}

# These assume pixel values in [0, 1] (or uint8): on our normalized floats they would clamp
# everything below 0 away. They run inside UnitRange instead.
UNIT_RANGE_STEPS = {"ColorJitter", "RandAugment", "TrivialAugmentWide", "AutoAugment"}


class UnitRange(nn.Module):
    """Run ``transform`` on the image rescaled to [0, 1] by its own min and max, then map back.

    The mapping is affine and per image, so a transform that leaves pixels alone gives the
    input back exactly (up to float rounding), and the output keeps the input's shape and dtype.
    """

    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dims = (-3, -2, -1)
        low = image.amin(dim=dims, keepdim=True)
        span = (image.amax(dim=dims, keepdim=True) - low).clamp_min(1e-12)
        out = self.transform((image - low) / span)
        return out * span + low

    def extra_repr(self) -> str:
        return repr(self.transform)


def _plain(value: Any) -> Any:
    """OmegaConf containers (and tuples) as plain dicts and lists, for torchvision's checks."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def _enum_values(params: dict[str, Any]) -> dict[str, Any]:
    """Accept ``interpolation: bilinear`` and ``policy: cifar10`` as strings from YAML."""
    if isinstance(params.get("interpolation"), str):
        params["interpolation"] = v2.InterpolationMode(params["interpolation"].lower())
    if isinstance(params.get("policy"), str):
        params["policy"] = v2.AutoAugmentPolicy(params["policy"].lower())
    return params


def build_step(step: Any, where: str, image_size: tuple[int, int]) -> Transform:
    """One pipeline step, ``{name: RandomErasing, p: 0.25}``, checked key by key."""
    if not isinstance(step, Mapping) or "name" not in step:
        raise UserError(
            f"{where} must be a mapping with a name, e.g. {{name: RandomHorizontalFlip, p: 0.5}}"
        )
    params = _plain(step)
    name = params.pop("name")
    if name not in STEPS:
        hint = difflib.get_close_matches(str(name), STEPS, n=3)
        did_you_mean = f"did you mean {' or '.join(repr(h) for h in hint)}? " if hint else ""
        raise UserError(
            f"unknown transform '{name}' in {where}; {did_you_mean}"
            f"available: {', '.join(sorted(STEPS))}"
        )
    cls = STEPS[name]
    if name == "RandomCrop":
        params.setdefault("size", list(image_size))  # crop back to the input size
    settable = {
        key: p
        for key, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    for key in params:
        if key not in settable:
            hint = difflib.get_close_matches(key, settable, n=1) or [
                k for k in settable if key.startswith(k) or k.startswith(key)
            ]
            did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
            raise UserError(
                f"unknown key {where}.{key} for {name}; {did_you_mean}"
                f"allowed keys: {', '.join(settable) or 'none'}"
            )
    for key, parameter in settable.items():
        if key not in params and parameter.default is inspect.Parameter.empty:
            raise UserError(f"{where}.{key} is required by {name}; set it in the step")
    try:
        transform = cls(**_enum_values(params))
    except (TypeError, ValueError) as error:
        raise UserError(f"{where} ({name}): {error}") from None
    return UnitRange(transform) if name in UNIT_RANGE_STEPS else transform


@AUGMENTATIONS.register("pipeline")
def pipeline(image_size: tuple[int, int] | None, steps: list[dict] = ()) -> Transform | None:
    """An ordered list of torchvision.transforms.v2 steps, each ``{name: Class, key: value}``.

    ``RandomCrop`` crops back to the input size unless ``size`` is given. ColorJitter and the
    auto-augment policies run on the image rescaled to [0, 1] (see ``UnitRange``).
    """
    size = _need_image("pipeline", image_size)
    return _compose(
        [build_step(step, f"augmentation.steps[{i}]", size) for i, step in enumerate(steps)]
    )


# --- on the device: crops and flips of a whole batch at once (data.on_device=true) ----------


class BatchRandomCrop(nn.Module):
    """torchvision's ``RandomCrop`` (padding, ``pad_if_needed``, fill and padding mode
    included) applied to a batch, each image at its own random offset, drawn on the batch's
    device with its default generator."""

    def __init__(self, step: v2.RandomCrop):
        super().__init__()
        self.step = step

    def padding(self, height: int, width: int) -> list[int]:
        """``[left, top, right, bottom]``, as RandomCrop pads an image of this size."""
        left, right, top, bottom = self.step.padding or (0, 0, 0, 0)
        crop_height, crop_width = self.step.size
        if self.step.pad_if_needed:
            extra_height = max(0, crop_height - (height + top + bottom))
            extra_width = max(0, crop_width - (width + left + right))
            top, bottom = top + extra_height, bottom + extra_height
            left, right = left + extra_width, right + extra_width
        return [left, top, right, bottom]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        padded = self.pad(images)
        height, width = padded.shape[-2:]
        crop_height, crop_width = self.step.size
        if crop_height > height or crop_width > width:
            raise UserError(
                f"augmentation RandomCrop of size {crop_height}x{crop_width} is larger than the "
                f"padded {height}x{width} images; lower its size or raise its padding"
            )
        count, device = len(images), images.device
        top = torch.randint(0, height - crop_height + 1, (count,), device=device)
        left = torch.randint(0, width - crop_width + 1, (count,), device=device)
        return crop(padded, top, left, crop_height, crop_width)

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        padding = self.padding(*images.shape[-2:])
        if not any(padding):
            return images
        return v2.functional.pad(
            images, padding, fill=self.step.fill, padding_mode=self.step.padding_mode
        )


def crop(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``images[i, :, top[i]:top[i] + height, left[i]:left[i] + width]`` for every image i,
    in one gather."""
    count, channels, device = images.shape[0], images.shape[1], images.device
    rows = (top[:, None] + torch.arange(height, device=device))[:, None, :, None]
    columns = (left[:, None] + torch.arange(width, device=device))[:, None, None, :]
    batch = torch.arange(count, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    return images[batch, channel, rows, columns]


class BatchRandomFlip(nn.Module):
    """Flip each image of a batch along ``dim`` with probability ``p``, on its own."""

    def __init__(self, p: float, dim: int):
        super().__init__()
        self.p, self.dim = p, dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(len(images), device=images.device) < self.p
        flip = flip.view(-1, *[1] * (images.ndim - 1))
        return torch.where(flip, images.flip(self.dim), images)


def mirrors(transform: Transform | None) -> bool:
    """Whether a train transform flips images left to right: a model trained with it saw
    mirror images as their own class (test-time averaging with mirrors is then sound)."""
    if isinstance(transform, v2.RandomHorizontalFlip):
        return transform.p > 0
    inner = getattr(transform, "transforms", None) or getattr(transform, "transform", None)
    if isinstance(inner, list | tuple):
        return any(mirrors(step) for step in inner)
    return inner is not None and mirrors(inner)


DEVICE_STEPS = ("RandomCrop", "RandomHorizontalFlip", "RandomVerticalFlip")


def device_augmentation(transform: Transform | None) -> Transform | None:
    """The train transform as one operation on a batch, run on the batch's device.

    ``transform`` is the per-sample pipeline an augmentation builds: a ``v2.Compose`` of
    RandomCrop, RandomHorizontalFlip and RandomVerticalFlip (presets ``basic`` and ``cifar``,
    or a ``pipeline`` of them), or None. Each image draws its own crop offset and flips, with
    the probabilities of the steps, from its device's default generator, which checkpoints
    save. Raises UserError naming the first other step.
    """
    if transform is None:
        return None
    steps = transform.transforms if isinstance(transform, v2.Compose) else [transform]
    batch_steps: list[nn.Module] = []
    for step in steps:
        kind = type(step)
        if kind is v2.RandomCrop:
            batch_steps.append(BatchRandomCrop(step))
        elif kind is v2.RandomHorizontalFlip:
            batch_steps.append(BatchRandomFlip(step.p, dim=-1))
        elif kind is v2.RandomVerticalFlip:
            batch_steps.append(BatchRandomFlip(step.p, dim=-2))
        else:
            name = type(step.transform if kind is UnitRange else step).__name__
            raise UserError(
                "data.on_device=true augments on the device with RandomCrop and flips only, "
                f"and this augmentation has {name}: use data.on_device=false, or "
                f"augmentation=basic, cifar or a pipeline of {', '.join(DEVICE_STEPS)}"
            )
    return nn.Sequential(*batch_steps)
