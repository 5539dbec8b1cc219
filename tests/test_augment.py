"""Augmentation presets and pipelines: shapes, randomness, validation, train split only."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2

from trainkit import paths
from trainkit.augment import STEPS, UnitRange, device_augmentation, mirrors
from trainkit.errors import UserError
from trainkit.registry import AUGMENTATIONS, load_components

load_components()

PRESETS = [name for name in AUGMENTATIONS.names() if name != "none"]


def preset(name: str, image_size=(32, 32), **overrides):
    node = OmegaConf.load(paths.config_dir() / "augmentation" / f"{name}.yaml")
    node = OmegaConf.merge(node, overrides)
    return AUGMENTATIONS.build(node, "augmentation", image_size=image_size)


def pipeline(*steps, image_size=(32, 32)):
    node = OmegaConf.create({"name": "pipeline", "steps": list(steps)})
    return AUGMENTATIONS.build(node, "augmentation", image_size=image_size)


def test_none_returns_none():
    assert preset("none") is None


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
def test_presets_build_from_yaml_and_keep_shape(name, shape):
    torch.manual_seed(0)
    transform = preset(name, image_size=shape[1:])
    x = torch.randn(shape)
    y = transform(x)
    assert y.shape == x.shape and y.dtype == torch.float32


def _flips(transform) -> list:
    return [t for t in transform.transforms if isinstance(t, (v2.RandomHorizontalFlip,))]


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("none", {}, False),
        ("digits", {}, False),
        ("basic", {}, True),
        ("basic", {"flip": 0.0}, False),
        ("cifar", {}, True),
        ("imagenet", {}, True),
        ("randaugment", {}, True),
    ],
)
def test_which_presets_train_on_mirror_images(name, overrides, expected):
    assert mirrors(preset(name, **overrides)) is expected


def test_a_pipeline_mirrors_when_one_of_its_steps_flips_left_to_right():
    assert mirrors(pipeline({"name": "RandomCrop", "padding": 2}, {"name": "RandomHorizontalFlip"}))
    assert not mirrors(pipeline({"name": "RandomVerticalFlip"}, {"name": "RandomErasing"}))
    assert not mirrors(pipeline({"name": "RandomHorizontalFlip", "p": 0.0}))
    assert mirrors(v2.RandomApply([v2.Compose([v2.RandomHorizontalFlip()])]))


def test_digits_never_flips():
    transform = preset("digits", image_size=(8, 8))
    assert transform.transforms and not _flips(transform)
    # On an asymmetric image with rotation off, a flip would show as a mirrored output.
    transform = preset("digits", image_size=(8, 8), rotation=0.0, shift=1)
    torch.manual_seed(0)
    x = torch.arange(64.0).reshape(1, 8, 8)
    mirrored = x.flip(-1)
    for _ in range(100):
        y = transform(x)
        # Any shift of x differs from any shift of its mirror on the interior pixels.
        assert not torch.equal(y[:, 2:6, 2:6], mirrored[:, 2:6, 2:6])


def test_cifar_changes_images_and_keeps_shape():
    torch.manual_seed(0)
    transform = preset("cifar")
    assert _flips(transform) and isinstance(transform.transforms[0], v2.RandomCrop)
    x = torch.randn(3, 32, 32)
    outputs = [transform(x) for _ in range(10)]
    assert all(y.shape == x.shape for y in outputs)
    assert any(not torch.equal(y, x) for y in outputs)


@pytest.mark.parametrize(
    ("name", "off"),
    [("basic", {"shift": 0, "flip": 0.0}), ("cifar", {"padding": 0, "flip": 0.0}),
     ("digits", {"shift": 0, "rotation": 0.0}), ("pipeline", {"steps": []}),
     ("randaugment", {"num_ops": 0, "padding": 0, "flip": 0.0})],
)  # fmt: skip
def test_a_preset_with_every_step_off_is_no_transform(name, off):
    assert preset(name, **off) is None


def test_presets_need_images():
    with pytest.raises(UserError, match="needs image inputs"):
        preset("cifar", image_size=None)


def test_imagenet_crops_any_image_to_the_image_size():
    torch.manual_seed(0)
    transform = preset("imagenet", image_size=(32, 32))
    assert isinstance(transform.transforms[0], v2.RandomResizedCrop)
    assert transform.transforms[0].scale == (0.08, 1.0)
    # imagefolder hands over the whole image, larger than the model's input and not square.
    outputs = [transform(torch.randn(3, 40, 56)) for _ in range(5)]
    assert all(y.shape == (3, 32, 32) for y in outputs)
    assert not torch.equal(outputs[0], outputs[1])


def test_imagenet_min_scale_is_checked():
    with pytest.raises(UserError, match=r"^augmentation\.min_scale=0 is out of range"):
        preset("imagenet", min_scale=0)


def test_randaugment_runs_on_the_unit_range_and_keeps_normalized_values():
    transform = preset("randaugment")
    *crop_and_flip, wrapped = transform.transforms
    assert [type(t) for t in crop_and_flip] == [v2.RandomCrop, v2.RandomHorizontalFlip]
    assert isinstance(wrapped, UnitRange) and isinstance(wrapped.transform, v2.RandAugment)
    assert (wrapped.transform.num_ops, wrapped.transform.magnitude) == (2, 9)
    torch.manual_seed(0)
    x = torch.randn(3, 32, 32)
    outputs = [transform(x) for _ in range(20)]
    # RandAugment on the normalized floats directly would clamp everything below 0 away.
    assert all((y < -1).any() for y in outputs)
    assert len({round(y.sum().item(), 3) for y in outputs}) > 10


def test_randaugment_on_a_black_to_white_image_is_randaugment_on_its_pixels():
    pixels = torch.rand(3, 16, 16)
    pixels.view(-1)[:2] = torch.tensor([0.0, 1.0])  # the full range, so UnitRange is exact
    normalized = (pixels - 0.5) / 0.25
    transform = preset("randaugment", image_size=(16, 16), padding=0, flip=0.0, magnitude=15)
    plain = v2.RandAugment(num_ops=2, magnitude=15)
    for seed in range(10):
        torch.manual_seed(seed)
        expected = plain(pixels)
        torch.manual_seed(seed)
        assert torch.allclose(transform(normalized) * 0.25 + 0.5, expected, atol=1e-4)


@pytest.mark.parametrize(("key", "value"), [("magnitude", 31), ("num_ops", -1)])
def test_randaugment_ranges_are_checked(key, value):
    with pytest.raises(UserError, match=rf"^augmentation\.{key}={value} is out of range"):
        preset("randaugment", **{key: value})


# --- pipeline ------------------------------------------------------------------------------

STEP_ARGS = {
    "RandomCrop": {"padding": 2},
    "RandomHorizontalFlip": {"p": 1.0},
    "RandomVerticalFlip": {"p": 1.0},
    "ColorJitter": {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.2},
    "RandomRotation": {"degrees": 30},
    "RandomAffine": {"degrees": 20, "translate": [0.1, 0.1]},
    "RandomErasing": {"p": 1.0},
    "RandAugment": {"num_ops": 3, "magnitude": 15},
    "TrivialAugmentWide": {},
    "AutoAugment": {"policy": "cifar10"},
    "Normalize": {"mean": [0.5], "std": [2.0]},
    "GaussianBlur": {"kernel_size": 3, "sigma": 1.0},
}


def test_every_allowed_step_has_test_arguments():
    assert set(STEP_ARGS) == set(STEPS)


@pytest.mark.parametrize("name", sorted(STEP_ARGS))
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
def test_each_step_runs_keeps_shape_and_changes_values(name, shape):
    torch.manual_seed(0)
    transform = pipeline({"name": name, **STEP_ARGS[name]}, image_size=shape[1:])
    x = torch.randn(shape)
    outputs = [transform(x) for _ in range(10)]
    for y in outputs:
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert any(not torch.allclose(y, x, atol=1e-4) for y in outputs)


def test_unit_range_wrapper_maps_back_and_keeps_negative_values():
    x = torch.randn(3, 8, 8)
    assert torch.allclose(UnitRange(lambda image: image)(x), x, atol=1e-6)
    # ColorJitter on raw normalized floats would clamp negatives to 0; wrapped it does not.
    torch.manual_seed(0)
    y = pipeline({"name": "ColorJitter", "brightness": 0.2}, image_size=(8, 8))(x)
    assert (y < 0).any()


def test_steps_run_in_order_from_a_command_line_style_list():
    transform = pipeline(
        {"name": "RandomHorizontalFlip", "p": 1.0}, {"name": "RandomVerticalFlip", "p": 1.0}
    )
    x = torch.randn(3, 32, 32)
    assert torch.equal(transform(x), x.flip(-1).flip(-2))


def test_yaml_strings_for_enums():
    transform = pipeline({"name": "RandomRotation", "degrees": 10, "interpolation": "bilinear"})
    assert transform.transforms[0].interpolation == v2.InterpolationMode.BILINEAR


def test_unknown_step_name_suggests_the_closest():
    with pytest.raises(UserError) as error:
        pipeline({"name": "RandomHorizontalFlip"}, {"name": "RandomFlip"})
    message = str(error.value)
    assert message.startswith("unknown transform 'RandomFlip' in augmentation.steps[1]; did you")
    assert "'RandomHorizontalFlip'" in message.split("available")[0]
    assert "available: AutoAugment, ColorJitter, GaussianBlur, Normalize, RandAugment" in message


def test_unknown_key_names_the_step_and_key():
    with pytest.raises(UserError) as error:
        pipeline({"name": "RandomErasing", "prob": 0.25})
    assert str(error.value).startswith(
        "unknown key augmentation.steps[0].prob for RandomErasing; did you mean 'p'?"
    )


def test_missing_required_argument():
    with pytest.raises(UserError, match=r"^augmentation\.steps\[0\]\.degrees is required"):
        pipeline({"name": "RandomRotation"})


def test_bad_value_names_the_step():
    with pytest.raises(UserError, match=r"^augmentation\.steps\[0\] \(RandomErasing\): "):
        pipeline({"name": "RandomErasing", "p": 2.0})


@pytest.mark.parametrize("step", ["RandomHorizontalFlip", {"p": 0.5}])
def test_a_step_must_be_a_mapping_with_a_name(step):
    with pytest.raises(UserError, match=r"augmentation\.steps\[0\]"):
        pipeline(step)


def test_pipeline_needs_images():
    with pytest.raises(UserError, match="needs image inputs"):
        pipeline({"name": "RandomHorizontalFlip"}, image_size=None)


# --- train split only ----------------------------------------------------------------------


def test_augmentation_applies_to_the_train_split_only():
    from trainkit.data import digits

    splits = digits()
    splits.train.transform = pipeline(
        {"name": "RandomErasing", "p": 1.0}, {"name": "RandomCrop", "padding": 2}, image_size=(8, 8)
    )
    torch.manual_seed(0)
    assert not torch.equal(splits.train[0][0], splits.train[0][0])
    first, second = splits.train.__getitems__([0, 1]), splits.train.__getitems__([0, 1])
    assert not torch.equal(first[0], second[0])
    assert torch.equal(splits.val[0][0], splits.val.inputs[0])
    assert torch.equal(splits.test[0][0], splits.test.inputs[0])
    rows = list(range(len(splits.test)))
    assert torch.equal(splits.test.__getitems__(rows)[0], splits.test.inputs)


# --- on the device: crops and flips of a batch (data.on_device=true) -------------------------


def offsets_drawn(
    step: v2.RandomCrop, images: torch.Tensor, cropped: torch.Tensor
) -> tuple[list, set]:
    """For each cropped image, the (top, left) at which torchvision's own RandomCrop gives
    exactly that crop of the image (the reference, independent of trainkit's code); and
    every offset RandomCrop can draw."""
    params = step.make_params([images])
    padded_height = images.shape[-2] + params["padding"][1] + params["padding"][3]
    padded_width = images.shape[-1] + params["padding"][0] + params["padding"][2]
    height, width = step.size
    matches = {}
    for top in range(padded_height - height + 1):
        for left in range(padded_width - width + 1):
            fixed = {**params, "top": top, "left": left, "needs_crop": True}
            reference = step.transform(images, fixed)  # every image at this offset at once
            matches[top, left] = (reference == cropped).flatten(1).all(dim=1)
    found = []
    for i in range(len(images)):
        (offset,) = [offset for offset, match in matches.items() if match[i]]
        found.append(offset)
    return found, set(matches)


@pytest.mark.parametrize(
    "params",
    [
        {"padding": 2},
        {"padding": 2, "fill": 0.5},
        {"padding": [1, 3], "padding_mode": "edge"},
        {"padding": [1, 0, 2, 3], "padding_mode": "reflect"},
        {"padding": 2, "padding_mode": "symmetric"},
        {"size": [6, 5]},  # smaller than the image, no padding
        {"size": [10, 9], "pad_if_needed": True},
    ],
)
def test_a_device_crop_is_torchvision_random_crop_at_every_offset(params):
    params = {"size": [8, 8], **params}
    step = v2.RandomCrop(params.pop("size"), **params)
    augment = device_augmentation(v2.Compose([step]))
    torch.manual_seed(0)
    images = torch.randn(4000, 2, 8, 8)
    cropped = augment(images)
    assert cropped.shape == (4000, 2, *step.size)
    found, possible = offsets_drawn(step, images, cropped)
    counts = Counter(found)
    assert set(counts) == possible  # every offset appears
    expected = len(images) / len(possible)
    assert all(0.7 * expected < n < 1.3 * expected for n in counts.values()), counts


def test_device_crops_with_constant_padding_shift_by_minus_pad_to_pad():
    augment = device_augmentation(preset("basic", image_size=(8, 8), flip=0.0))
    torch.manual_seed(1)
    # Pixel values 1..64 say where each pixel came from; padding fills with 0.
    images = torch.arange(1.0, 65.0).reshape(1, 1, 8, 8).repeat(3000, 1, 1, 1)
    centre = augment(images)[:, 0, 4, 4].long() - 1  # within 2 pixels of the middle: never 0
    shifts = Counter(zip((centre // 8 - 4).tolist(), (centre % 8 - 4).tolist(), strict=True))
    assert set(shifts) == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}


@pytest.mark.parametrize(
    ("name", "dim"), [("RandomHorizontalFlip", -1), ("RandomVerticalFlip", -2)]
)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_device_flips_happen_at_their_rate_each_image_on_its_own(name, dim, p):
    augment = device_augmentation(pipeline({"name": name, "p": p}, image_size=(8, 8)))
    images = torch.randn(20000, 3, 8, 8)
    out = augment(images)
    flipped = (out == images.flip(dim)).flatten(1).all(dim=1)
    kept = (out == images).flatten(1).all(dim=1)
    assert bool((flipped ^ kept).all())  # each image whole, flipped or not
    assert flipped.float().mean().item() == pytest.approx(p, abs=0.02)


@pytest.mark.parametrize("name", ["basic", "cifar"])
def test_crop_and_flip_presets_run_on_the_device_and_draw_from_its_generator(name):
    augment = device_augmentation(preset(name, image_size=(8, 8)))
    assert [type(step).__name__ for step in augment] == ["BatchRandomCrop", "BatchRandomFlip"]
    images = torch.randn(64, 3, 8, 8)
    torch.manual_seed(7)
    first = augment(images)
    torch.manual_seed(7)  # what resuming a checkpoint restores
    assert torch.equal(augment(images), first)
    assert not torch.equal(augment(images), first)
    assert device_augmentation(None) is None


def test_a_pipeline_keeps_its_order_on_the_device():
    steps = [{"name": "RandomVerticalFlip", "p": 1.0}, {"name": "RandomCrop", "size": [4, 4]}]
    augment = device_augmentation(pipeline(*steps, image_size=(8, 8)))
    assert [type(step).__name__ for step in augment] == ["BatchRandomFlip", "BatchRandomCrop"]
    assert augment(torch.randn(5, 1, 8, 8)).shape == (5, 1, 4, 4)


@pytest.mark.parametrize(
    ("transform", "step"),
    [
        (lambda: preset("digits", image_size=(8, 8)), "RandomRotation"),
        (lambda: preset("imagenet", image_size=(8, 8)), "RandomResizedCrop"),
        (lambda: preset("randaugment", image_size=(8, 8)), "RandAugment"),
        (lambda: pipeline({"name": "RandomErasing"}, image_size=(8, 8)), "RandomErasing"),
        (lambda: pipeline({"name": "ColorJitter"}, image_size=(8, 8)), "ColorJitter"),
    ],
)
def test_other_steps_on_the_device_are_one_line_naming_the_step_and_the_fix(transform, step):
    with pytest.raises(UserError) as error:
        device_augmentation(transform())
    assert str(error.value) == (
        "data.on_device=true augments on the device with RandomCrop and flips only, and this "
        f"augmentation has {step}: use data.on_device=false, or augmentation=basic, cifar or "
        "a pipeline of RandomCrop, RandomHorizontalFlip, RandomVerticalFlip"
    )
