"""torchvision's data sets (from fake files, offline) and image folders."""

from __future__ import annotations

import gzip
import re
import shutil
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fake_images import (
    CIFAR10_CLASSES,
    fake_images,
    make_cifar10,
    make_cifar100,
    make_fashion_mnist,
    make_imagefolder,
    make_mnist,
)
from trainkit.data import LoaderSettings, build_loaders, vision
from trainkit.errors import UserError
from trainkit.registry import DATASETS, load_components

load_components()

# name: (writer, classes, train images, test images, shape of one image)
TORCHVISION_SETS = {
    "cifar10": (make_cifar10, 10, 100, 50, (3, 32, 32)),
    "cifar100": (make_cifar100, 100, 1000, 100, (3, 32, 32)),
    "mnist": (make_mnist, 10, 100, 50, (1, 28, 28)),
    "fashion_mnist": (make_fashion_mnist, 10, 100, 50, (1, 28, 28)),
}


def load(name: str, **params):
    return DATASETS.build({"name": name, **params}, "data")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    for writer, *_ in TORCHVISION_SETS.values():
        writer(root)
    return root


def no_network(monkeypatch):
    """Every URL torchvision opens fails as it does without DNS."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --- torchvision's data sets ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TORCHVISION_SETS))
def test_loads_from_files_sizes_shapes_and_classes(name, fake_root, monkeypatch):
    no_network(monkeypatch)  # the files are there: download=true must not need the network
    _, classes, n_train, n_test, shape = TORCHVISION_SETS[name]
    splits = load(name, root=str(fake_root))
    assert splits.num_classes == classes == len(splits.class_names)
    assert splits.input_shape == shape and splits.train[0][0].shape == shape
    assert len(splits.val) == round(0.1 * n_train)
    assert len(splits.train) == n_train - len(splits.val)
    assert len(splits.test) == n_test
    # Every class in both train and val (stratified), and the train split normalized.
    assert set(splits.val.targets.tolist()) == set(range(classes))
    inputs = splits.train.inputs.transpose(0, 1).flatten(1)
    assert torch.allclose(inputs.mean(1), torch.zeros(shape[0]), atol=1e-4)
    assert torch.allclose(inputs.std(1), torch.ones(shape[0]), atol=1e-2)
    assert splits.train.inputs.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(TORCHVISION_SETS))
def test_indices_point_into_the_official_train_and_test_sets(name, fake_root):
    _, classes, n_train, n_test, shape = TORCHVISION_SETS[name]
    splits = load(name, root=str(fake_root))
    train_and_val = torch.cat([splits.train.indices, splits.val.indices]).sort().values
    assert torch.equal(train_and_val, torch.arange(n_train))  # disjoint and complete
    assert torch.equal(splits.test.indices, torch.arange(n_test))
    _, train_labels = fake_images(classes, n_train // classes, shape[-2:])
    _, test_labels = fake_images(classes, n_test // classes, shape[-2:], seed=1)
    assert np.array_equal(splits.val.targets.numpy(), train_labels[splits.val.indices.numpy()])
    assert np.array_equal(splits.test.targets.numpy(), test_labels)


def test_class_names_come_from_the_files(fake_root):
    assert load("cifar10", root=str(fake_root)).class_names == CIFAR10_CLASSES
    assert load("cifar100", root=str(fake_root)).class_names[:2] == ["class_0", "class_1"]
    assert load("fashion_mnist", root=str(fake_root)).class_names[0] == "T-shirt/top"


def test_val_split_is_seeded(fake_root):
    first, again, other = (load("mnist", root=str(fake_root), seed=s) for s in (0, 0, 1))
    assert torch.equal(first.val.indices, again.val.indices)
    assert not torch.equal(first.val.indices, other.val.indices)


def test_val_and_test_use_the_train_statistics(fake_root):
    splits = load("mnist", root=str(fake_root))
    train_raw = torch.as_tensor(fake_images(10, 10, (1, 28, 28))[0], dtype=torch.float64)
    test_raw = torch.as_tensor(fake_images(10, 5, (1, 28, 28), seed=1)[0], dtype=torch.float64)
    train_raw = train_raw[splits.train.indices]
    expected = (test_raw - train_raw.mean()) / train_raw.std()
    assert torch.allclose(splits.test.inputs.double(), expected, atol=1e-3)


# --- offline -------------------------------------------------------------------------------


def test_offline_download_is_one_line_naming_the_files_and_directory(tmp_path, monkeypatch):
    no_network(monkeypatch)
    root = tmp_path / "data"
    with pytest.raises(UserError) as error:
        load("cifar10", root=str(root))
    assert str(error.value) == (
        "data cifar10: download failed ([Errno -2] Name or service not known); without network, "
        f"put cifar-10-python.tar.gz (from https://www.cs.toronto.edu/~kriz/cifar.html) in {root}/ "
        f"or extract it to {root}/cifar-10-batches-py"
    )


@pytest.mark.parametrize("name", ["cifar100", "mnist", "fashion_mnist"])
def test_offline_download_of_each_set_is_one_user_error_line(name, tmp_path, monkeypatch):
    no_network(monkeypatch)
    with pytest.raises(UserError) as error:
        load(name, root=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"data {name}: download failed (")
    assert "Name or service not known); without network, put " in message


@pytest.mark.parametrize("name", ["cifar10", "mnist", "fashion_mnist"])
def test_a_failed_download_leaves_no_folder_it_made(name, tmp_path, monkeypatch):
    """data/ (and data/MNIST/raw/) made for the download go with it; a folder that was
    there before stays, with what it held."""
    no_network(monkeypatch)
    with pytest.raises(UserError, match="download failed"):
        load(name, root=str(tmp_path / "data"))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("mine")
    with pytest.raises(UserError, match="download failed"):
        load(name, root=str(tmp_path / "data"))
    assert [p.name for p in tmp_path.rglob("*")] == ["data", "mine.txt"]


def test_a_download_that_fails_midway_removes_what_it_wrote_and_nothing_else(tmp_path):
    """Its partial archive goes; what another process put in the folder meanwhile stays, a
    file of the same name too (the same download in a parallel job), and the folders."""
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"

    def fetch(into):  # the connection drops after part of the archive, while another job writes
        (into / "MNIST" / "raw").mkdir(parents=True)
        (into / "MNIST" / "raw" / "train.gz").write_bytes(b"part of it")
        raw.mkdir(parents=True)
        (raw / "train.gz").write_text("another process's")
        raise OSError("connection reset")

    with pytest.raises(UserError, match="download failed"):
        vision._ensure_files("mnist", root, [raw / "train"], [raw / "train.gz"], True, fetch, "")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["MNIST", "data", "raw", "train.gz"]
    assert (raw / "train.gz").read_text() == "another process's"


def test_a_download_puts_its_files_in_place_and_writes_over_none(tmp_path):
    """Each file goes to its place from the download's own folder, which then goes; a file
    already there (another process's download, finished first) is kept as it is."""
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"

    def fetch(into):
        (into / "MNIST" / "raw").mkdir(parents=True)
        for name in ("train.gz", "train", "test"):
            (into / "MNIST" / "raw" / name).write_text(f"downloaded {name}")
        raw.mkdir(parents=True)
        (raw / "test").write_text("theirs")

    vision._ensure_files("mnist", root, [raw / "train", raw / "test"], [raw / "train.gz"], True,
                         fetch, "")  # fmt: skip
    assert sorted(p.name for p in root.rglob("*")) == ["MNIST", "raw", "test", "train", "train.gz"]
    assert (raw / "train").read_text() == "downloaded train"
    assert (raw / "test").read_text() == "theirs"


def test_mnist_offline_error_lists_the_four_files(tmp_path, monkeypatch):
    no_network(monkeypatch)
    with pytest.raises(UserError) as error:
        load("mnist", root=str(tmp_path))
    assert str(error.value).endswith(
        "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (from https://ossci-datasets.s3.amazonaws.com/mnist/) in "
        f"{tmp_path}/MNIST/raw"
    )


def test_download_false_with_missing_files_names_the_first_missing_file(tmp_path, monkeypatch):
    no_network(monkeypatch)
    with pytest.raises(UserError) as error:
        load("fashion_mnist", root=str(tmp_path), download=False)
    assert str(error.value).startswith(
        f"data fashion_mnist: {tmp_path}/FashionMNIST/raw/train-images-idx3-ubyte is missing "
        "and data.download=false; put train-images-idx3-ubyte.gz, "
    )


def test_a_silent_server_times_out_instead_of_hanging(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # accepts connections into the backlog and never answers
    port = server.getsockname()[1]
    monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")
    monkeypatch.setattr(vision, "DOWNLOAD_TIMEOUT_S", 0.5)
    start = time.monotonic()
    try:
        with pytest.raises(UserError, match=r"^data cifar10: download failed \(timed out\)"):
            load("cifar10", root=str(tmp_path))
    finally:
        server.close()
    assert time.monotonic() - start < 10
    assert socket.getdefaulttimeout() is None  # restored


def _resolves(host: str, within_s: float = 5.0) -> bool:
    result = []
    thread = threading.Thread(
        target=lambda: result.append(_try_resolve(host)), daemon=True, name="resolve"
    )
    thread.start()
    thread.join(within_s)
    return bool(result and result[0])


def _try_resolve(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def test_the_real_no_network_path_fails_fast(tmp_path):
    if _resolves("www.cs.toronto.edu"):
        pytest.skip("this machine has network; the test would download CIFAR-10")
    start = time.monotonic()
    for name in ("cifar10", "mnist"):
        with pytest.raises(UserError, match=rf"^data {name}: download failed") as error:
            load(name, root=str(tmp_path))
        assert "\n" not in str(error.value)
    assert time.monotonic() - start < 60


def test_archives_put_in_place_by_hand_are_extracted(tmp_path, monkeypatch):
    no_network(monkeypatch)
    folder = make_cifar10(tmp_path / "made")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
    assert len(load("cifar10", root=str(tmp_path), download=False).test) == 50
    raw = make_mnist(tmp_path)
    for path in list(raw.iterdir()):
        with open(path, "rb") as source, gzip.open(f"{path}.gz", "wb") as target:
            shutil.copyfileobj(source, target)
        path.unlink()
    assert len(load("mnist", root=str(tmp_path), download=False).test) == 50


def test_a_truncated_archive_says_which_file_to_delete(tmp_path):
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b\x08 not really")
    with pytest.raises(UserError, match=r"cannot extract .*cifar-100-python\.tar\.gz .*delete it"):
        load("cifar100", root=str(tmp_path), download=False)


# --- image folders -------------------------------------------------------------------------


def folder_splits(root, **params):
    return load("imagefolder", root=str(root), image_size=16, resize=20, **params)


def test_train_and_val_folders_val_is_the_test_split(tmp_path):
    make_imagefolder(tmp_path, classes=3, per_class=10, splits=("train", "val"))
    splits = folder_splits(tmp_path)
    assert splits.class_names == ["class_0", "class_1", "class_2"] and splits.num_classes == 3
    assert splits.input_shape == (3, 16, 16)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (27, 3, 15)
    test_items = zip(splits.test.files, splits.test.targets, strict=True)
    assert all(f"/val/class_{target}/" in file for file, target in test_items)
    assert sorted(splits.val.targets) == [0, 1, 2]  # stratified
    carved = set(splits.train.indices) | set(splits.val.indices)
    assert carved == set(range(30)) and not set(splits.train.indices) & set(splits.val.indices)


def test_train_val_and_test_folders_are_used_as_they_are(tmp_path):
    make_imagefolder(tmp_path, per_class=4, splits=("train", "val", "test"))
    splits = folder_splits(tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 6, 6)
    assert all("/val/" in f for f in splits.val.files)
    assert all("/test/" in f for f in splits.test.files)


def test_without_val_the_val_split_is_carved_from_train(tmp_path):
    make_imagefolder(tmp_path, per_class=10, splits=("train", "test"))
    splits = folder_splits(tmp_path, val_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 15)
    assert all("/train/" in f for f in splits.val.files)


def test_items_are_eval_views_of_the_requested_size(tmp_path):
    make_imagefolder(tmp_path, size=(40, 30))  # not square
    splits = folder_splits(tmp_path)
    image, target, index = splits.test[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert target == splits.test.targets[4] and index == 4
    loaders = build_loaders(splits, LoaderSettings(eval_batch_size=3), seed=0)
    images, targets, indices = next(iter(loaders["val"]))
    assert images.shape == (3, 3, 16, 16) and targets.dtype == indices.dtype == torch.long
    assert targets.tolist() == splits.val.targets[:3]


def test_pixels_are_normalized_with_mean_and_std(tmp_path):
    folder = tmp_path / "train" / "red"
    folder.mkdir(parents=True)
    Image.new("RGB", (30, 20), (255, 0, 51)).save(folder / "a.png")
    (tmp_path / "val" / "red").mkdir(parents=True)
    Image.new("L", (30, 20), 255).save(tmp_path / "val" / "red" / "grey.png")
    for split in ("train", "val"):  # (classification needs a second class)
        (tmp_path / split / "blue").mkdir()
        Image.new("RGB", (30, 20), (0, 0, 255)).save(tmp_path / split / "blue" / "b.png")
    splits = folder_splits(tmp_path, mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 0.2], val_fraction=0.0)
    red = splits.class_names.index("red")
    (image,) = [x for x, y, _ in (splits.train[i] for i in range(len(splits.train))) if y == red]
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, -2.0, -1.5]), atol=1e-5)
    # grey images are converted to RGB
    assert [splits.test[i][0].shape for i in range(len(splits.test))] == [(3, 16, 16)] * 2


def test_16_and_32_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    """As predict reads them (trainkit.data.preprocess.convert_image): the same image in 8,
    16 and 32 bits (integers and floats in 0..1) is the same model input, within 1/255."""
    folder = tmp_path / "train" / "grey"
    folder.mkdir(parents=True)
    wide = np.linspace(0, 65535, 20 * 30).reshape(20, 30).round().astype(np.uint16)
    Image.fromarray(np.round(wide / 257).astype(np.uint8), mode="L").save(folder / "a8.png")
    Image.fromarray(wide).save(folder / "b16.png")  # PIL's mode I;16
    Image.fromarray(wide.astype(np.int32)).save(folder / "c32.tif")  # mode I
    Image.fromarray((wide / 65535).astype(np.float32)).save(folder / "dfloat.tif")  # mode F
    for split in ("train", "val"):  # (classification needs a second class)
        (tmp_path / split / "other").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 20)).save(tmp_path / split / "other" / "x.png")
    std = 0.25
    splits = folder_splits(tmp_path, mean=[0.5] * 3, std=[std] * 3, val_fraction=0.0)
    assert [Path(f).name for f in splits.train.files[:4]] == [
        "a8.png", "b16.png", "c32.tif", "dfloat.tif"
    ]  # fmt: skip
    eight_bit = splits.train[0][0]
    assert eight_bit.std() > 0.5  # a picture, not one flat colour
    for i in (1, 2, 3):
        difference = (splits.train[i][0] - eight_bit).abs().max().item()
        assert difference <= 1 / 255 / std + 1e-6, splits.train.files[i]


def test_the_train_transform_gets_the_whole_resized_image_and_is_cropped(tmp_path):
    make_imagefolder(tmp_path, size=(40, 30))
    splits = folder_splits(tmp_path)
    seen = []
    splits.train.transform = lambda image: seen.append(image.shape) or image
    assert splits.train[0][0].shape == (3, 16, 16)
    assert seen == [(3, 20, 26)]  # shorter side 20 = resize, aspect kept
    assert splits.val[0][0].shape == (3, 16, 16)  # the carved val split is not augmented


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("no root", r"imagefolder: there is no directory \S+/nowhere; expected \S+/train/<c"),
        ("nothing", r"imagefolder: \S+/train has no class folders; expected \S+/train/<class>/"),
        ("empty train", r"imagefolder: \S+/train has no class folders"),
        ("train only", r"imagefolder: \S+ has train/ but neither val/ nor test/"),
        ("empty class", r"imagefolder: \S+/train/class_9 holds no images \(.jpg, "),
        ("unknown class", r"imagefolder: \S+/val/class_7 is a class that the train folder lacks"),
        ("empty val", r"imagefolder: \S+/val holds no images"),
    ],
)
def test_layout_errors_name_the_directory(layout, message, tmp_path):
    if layout == "empty train":
        (tmp_path / "train").mkdir()
    if layout in ("train only", "empty class", "unknown class", "empty val"):
        make_imagefolder(
            tmp_path, splits=("train",) if layout == "train only" else ("train", "val")
        )
    if layout == "empty class":
        (tmp_path / "train" / "class_9").mkdir()
    if layout == "unknown class":
        (tmp_path / "val" / "class_7").mkdir()
    if layout == "empty val":
        shutil.rmtree(tmp_path / "val")
        (tmp_path / "val" / "class_0").mkdir(parents=True)
    root = tmp_path / "nowhere" if layout == "no root" else tmp_path
    with pytest.raises(UserError, match=rf"^data {message}") as error:
        folder_splits(root)
    assert "\n" not in str(error.value)


def test_resize_below_image_size_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"^data\.resize=20 is below data\.image_size=24"):
        load("imagefolder", root=str(tmp_path), image_size=24, resize=20)


# --- files that cannot be decoded ----------------------------------------------------------


def make_bad_images(folder: Path) -> tuple[Path, Path]:
    """Two .png files that cannot be decoded in ``folder/class_0`` and ``folder/class_1``:
    random bytes (PIL cannot even open it) and a PNG cut in half (it opens; loading fails)."""
    garbage = folder / "class_0" / "garbage.png"
    garbage.write_bytes(np.random.default_rng(0).bytes(500))
    truncated = folder / "class_1" / "truncated.png"
    images, _ = fake_images(1, 1, (30, 40, 3))
    Image.fromarray(images[0]).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    return garbage, truncated


def bad_folder_splits(root, **params):
    """An image folder whose train split (all of train/) holds a file of random bytes and a
    PNG cut in half: two of its 32 files cannot be decoded."""
    make_imagefolder(root, classes=3, per_class=10, splits=("train", "val"))
    garbage, truncated = make_bad_images(root / "train")
    splits = folder_splits(root, val_fraction=0.0, **params)
    files = splits.train.files
    return splits, files.index(str(garbage)), files.index(str(truncated))


def epoch_indices(loader) -> list[int]:
    return torch.cat([indices for _, _, indices in loader]).tolist()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_leaves_bad_images_out_and_counts_each_once(num_workers, tmp_path, caplog):
    splits, garbage, truncated = bad_folder_splits(tmp_path)
    assert splits.train.on_bad_image == "skip"  # the default
    settings = LoaderSettings(batch_size=8, num_workers=num_workers)
    loader = build_loaders(splits, settings, seed=0)["train"]
    good = sorted(set(range(32)) - {garbage, truncated})
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        assert sorted(epoch_indices(loader)) == good
    flagged = splits.train.failed_to_decode.nonzero().flatten().tolist()
    assert flagged == sorted([garbage, truncated])  # in memory the worker processes share
    with caplog.at_level("WARNING", logger="trainkit"):
        splits.train.undecodable.report()
        splits.train.undecodable.report()  # once only
    (record,) = caplog.records
    first = splits.train.files[min(garbage, truncated)]
    assert record.getMessage() == (
        "data imagefolder: 2 images could not be decoded and were skipped "
        f"(data.on_bad_image=skip); first: {first}"
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_error_names_the_file_and_the_fix_in_one_line(num_workers, tmp_path):
    splits, _, _ = bad_folder_splits(tmp_path, on_bad_image="error")
    settings = LoaderSettings(batch_size=8, num_workers=num_workers)
    loader = build_loaders(splits, settings, seed=0)["train"]
    with pytest.raises(UserError) as error:
        epoch_indices(loader)
    assert re.fullmatch(
        r"data imagefolder: \S+/train/class_\d/(garbage|truncated)\.png cannot be decoded "
        r"\((cannot identify image file .*|image file is truncated.*)\); "
        r"delete or replace it, or set data\.on_bad_image=skip",
        str(error.value),
    ), str(error.value)


def test_each_kind_of_bad_file_gives_its_reason(tmp_path):
    splits, garbage, truncated = bad_folder_splits(tmp_path, on_bad_image="error")
    with pytest.raises(UserError, match=r"garbage\.png cannot be decoded \(cannot identify"):
        splits.train[garbage]
    with pytest.raises(UserError, match=r"truncated\.png cannot be decoded \(image file is trunc"):
        splits.train[truncated]
    assert splits.train[garbage + 1][0].shape == (3, 16, 16)


def test_a_batch_of_bad_images_only_holds_the_next_good_one(tmp_path):
    splits, garbage, truncated = bad_folder_splits(tmp_path)
    images, targets, indices = splits.train.__getitems__([garbage, truncated])
    after = max(garbage, truncated) + 1
    assert images.shape == (1, 3, 16, 16) and indices.tolist() == [after]
    assert targets.tolist() == [splits.train.targets[after]]


def test_the_three_splits_are_counted_together(tmp_path, caplog):
    make_imagefolder(tmp_path, per_class=10, splits=("train", "val"))
    make_bad_images(tmp_path / "train")
    make_bad_images(tmp_path / "val")
    splits = folder_splits(tmp_path, val_fraction=0.0)
    for split in (splits.train, splits.test):
        split.__getitems__(list(range(len(split))))
    with caplog.at_level("WARNING", logger="trainkit"):
        splits.train.undecodable.report()
    (record,) = caplog.records
    assert "4 images could not be decoded" in record.getMessage()


def test_on_bad_image_takes_skip_or_error(tmp_path):
    make_imagefolder(tmp_path)
    with pytest.raises(UserError, match=r"^data\.on_bad_image='ignore' .*'skip', 'error'"):
        folder_splits(tmp_path, on_bad_image="ignore")


def test_the_augmentation_check_reads_the_first_image_as_the_loader_does(tmp_path):
    """Before training, the train transform runs on the first sample (a mistake in it is one
    line then): under on_bad_image=skip, a first image that cannot be decoded is left out
    there too, not taken for a mistake."""
    from trainkit import config
    from trainkit.build import build_data

    root = make_imagefolder(tmp_path / "images", splits=("train", "val", "test"))
    first = sorted((root / "train").rglob("*.png"))[0]
    first.write_bytes(b"not an image")
    overrides = ["data=imagefolder", f"data.root={root}", "data.image_size=16",
                 "data.resize=16", "augmentation=basic"]  # fmt: skip
    cfg = config.resolve(config.compose(config.prepare(overrides)))
    splits, _ = build_data(cfg, seed=0)
    assert len(splits.train) == 30
