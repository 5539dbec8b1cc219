"""torchvision's downloadable image data sets and image folders.

CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST are held in memory as float32 tensors (CIFAR-10's
train images take about 600 MB) and normalized per channel with the train split's mean and
std, like the bundled sets. The official test set is the test split; the val split is carved
from the official train set (stratified, seeded). A sample's ``index`` is its position in the
official train set (train and val splits) or in the official test set (test split).

Files live under ``root``, relative to the working directory. Missing files are downloaded
unless ``download: false``; an archive already placed in ``root`` is extracted instead, so a
machine without network can be given the files by hand.

``imagefolder`` reads ``root/train/<class>/<image>`` (and ``val/``, ``test/``) lazily, one
image per item, so a data set as large as ImageNet never has to fit in memory. An image
that cannot be decoded is found when it is first loaded (checking a million files up front
would take minutes): ``on_bad_image`` says whether it stops the run or is left out.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import shutil
import socket
import struct
import tempfile
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from trainkit.data.preprocess import convert_image, image_record
from trainkit.data.splits import Splits, TensorSplit, stratified_split
from trainkit.errors import UserError
from trainkit.registry import DATASETS, PositiveFloat, PositiveInt, Probability
from trainkit.reporting import OWN_SHARE
from trainkit.rundir import make_folders, remove_made

# Per socket operation (connect, each read), not per file: a machine without network fails in
# seconds instead of hanging, while a slow but working download still finishes. (Name lookups
# are not sockets; the system resolver bounds those, typically to 5 s per try.)
DOWNLOAD_TIMEOUT_S = 30.0

log = logging.getLogger("trainkit")

# --- files: find, extract or download ------------------------------------------------------


def _one_line(error: Exception) -> str:
    """The last line of an error: torchvision's MNIST download error lists every mirror tried."""
    reason = getattr(error, "reason", None) or str(error) or type(error).__name__
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    return lines[-1].removeprefix("<urlopen error ").removesuffix(">") if lines else "no reason"


def _ensure_files(
    name: str,
    root: Path,
    needed: list[Path],
    archives: list[Path],
    download: bool,
    fetch: Callable[[Path], object],
    hint: str,
) -> None:
    """Make sure every ``needed`` file (under ``root``) exists: extract ``archives`` the user
    put in place, else, when ``download``, call ``fetch(into)`` (a torchvision download into
    a folder laid out as ``root``); raise UserError with ``hint``."""
    from torchvision.datasets.utils import extract_archive

    if all(path.is_file() for path in needed):
        return
    for archive in archives:
        if archive.is_file():
            try:
                extract_archive(archive, archive.parent)
            except Exception as error:  # a truncated download: tarfile, gzip and EOF errors
                raise UserError(
                    f"data {name}: cannot extract {archive} ({_one_line(error)}); "
                    "delete it and try again"
                ) from None
    missing = [path for path in needed if not path.is_file()]
    if missing and download:
        # The download goes to a folder of its own, then its files are linked into place:
        # whatever another process writes in root meanwhile (the same download, in a parallel
        # sweep job) is never removed or written over. On failure the folders made here go.
        made = make_folders(root, "data.root")
        staging = Path(tempfile.mkdtemp(prefix=".trainkit-download-", dir=root))
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        failure = None
        try:
            fetch(staging)
            for path in [*archives, *needed]:
                _link_new(staging / path.relative_to(root), path, made)
        except (OSError, RuntimeError) as error:  # URLError, timeouts, bad checksums
            failure = error
        finally:
            socket.setdefaulttimeout(previous)
            shutil.rmtree(staging, ignore_errors=True)  # mkdtemp's: this download's alone
        if failure is not None:
            remove_made(made)
            raise UserError(
                f"data {name}: download failed ({_one_line(failure)}); without network, {hint}"
            )
        missing = [path for path in needed if not path.is_file()]
    if missing:
        why = "data.download=false" if not download else "the download did not provide it"
        raise UserError(f"data {name}: {missing[0]} is missing and {why}; {hint}")


def _link_new(source: Path, path: Path, made: list[Path]) -> None:
    """``path`` as a new name of the downloaded ``source``, unless a file is there already
    (another process's download, or the user's: kept as it is); folders made go in ``made``."""
    if not source.is_file():
        return
    made += make_folders(path.parent, "data.root")
    try:
        os.link(source, path)
    except FileExistsError:
        pass


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain Python values, and nothing else: a data file is
    data, never code (a pickle may name any function to call)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it holds {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path, name: str, key: str):
    """``path``'s pickled dict, its value at ``key``; UserError for anything else."""
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy.core's move in numpy 2
            entry = _ArraysOnly(handle, encoding="latin1").load()
        return entry[key]
    except pickle.UnpicklingError as error:
        if str(error).startswith("it holds "):
            raise UserError(
                f"data {name}: {path} holds objects other than arrays and plain data "
                f"({str(error)[9:]}); trainkit never runs code from a data file"
            ) from None
        reason = str(error)
    except Exception as error:  # truncated, not a pickle, not CIFAR's layout
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    raise UserError(
        f"data {name}: {path} is not a readable CIFAR batch ({reason}); delete it so that it "
        "is downloaded again, or put the official file there"
    )


def _read_cifar(name: str, folder: Path, files: list[str], label_key: str):
    images, labels = [], []
    for file_name in files:
        images.append(_read_pickle(folder / file_name, name, "data"))
        labels.extend(_read_pickle(folder / file_name, name, label_key))
    try:
        images = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
        labels = torch.as_tensor(labels, dtype=torch.long)
    except (ValueError, TypeError, RuntimeError) as error:
        raise UserError(f"data {name}: the batches in {folder} are not CIFAR's ({error})") from None
    return images, labels


def _load_cifar(name: str, root: str, download: bool, fine: bool):
    """CIFAR's pickled batches, read directly: torchvision's class would insist on the official
    files' checksums, which hand-made and test files do not have."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    source = datasets.CIFAR100 if fine else datasets.CIFAR10
    base = Path(root)
    folder = base / source.base_folder
    train_files = [file_name for file_name, _ in source.train_list]
    test_files = [file_name for file_name, _ in source.test_list]
    meta_file = source.meta["filename"]
    _ensure_files(
        name,
        base,
        [folder / f for f in (*train_files, *test_files, meta_file)],
        [base / source.filename],
        download,
        lambda into: download_and_extract_archive(
            source.url, into, filename=source.filename, md5=source.tgz_md5
        ),
        f"put {source.filename} (from https://www.cs.toronto.edu/~kriz/cifar.html) in {base}/ "
        f"or extract it to {folder}",
    )
    label_key = "fine_labels" if fine else "labels"
    train_x, train_y = _read_cifar(name, folder, train_files, label_key)
    test_x, test_y = _read_cifar(name, folder, test_files, label_key)
    class_names = _read_pickle(folder / meta_file, name, source.meta["key"])
    return train_x, train_y, test_x, test_y, [str(c) for c in class_names]


def _load_mnist(name: str, root: str, download: bool, fashion: bool):
    """MNIST-format files (idx, uncompressed or .gz) in ``root/MNIST/raw`` or ``FashionMNIST``."""
    from torchvision import datasets

    source = datasets.FashionMNIST if fashion else datasets.MNIST
    raw = Path(root) / source.__name__ / "raw"
    archives = [file_name for file_name, _ in source.resources]
    _ensure_files(
        name,
        Path(root),
        [raw / Path(file_name).stem for file_name in archives],
        [raw / file_name for file_name in archives],
        download,
        lambda into: source(into, train=True, download=True),
        f"put {', '.join(archives)} (from {source.mirrors[0]}) in {raw}",
    )
    train, test = source(root, train=True), source(root, train=False)
    # (N, 28, 28) uint8 -> (N, 1, 28, 28): one grey channel.
    return train.data[:, None], train.targets, test.data[:, None], test.targets, source.classes


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W), shaped (1, C, 1, 1)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(4096):  # float64 a chunk at a time: all of CIFAR-10 is 1.2 GB
        chunk = chunk.double()
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


def _in_memory_splits(loaded, val_fraction: float, seed: int) -> Splits:
    """Carve val from the official train set; normalize every split with train statistics."""
    train_x, train_y, test_x, test_y, class_names = loaded
    train_idx, val_idx, _ = (
        torch.as_tensor(rows) for rows in stratified_split(train_y.numpy(), val_fraction, 0, seed)
    )
    mean, std = _channel_stats(train_x[train_idx])

    def split(images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> TensorSplit:
        # In place, so that only one float32 copy of each split ever exists.
        inputs = images[rows].float().sub_(mean).div_(std)
        return TensorSplit(inputs, labels[rows], rows)

    channels, *size = train_x.shape[1:]
    return Splits(
        split(train_x, train_y, train_idx),
        split(train_x, train_y, val_idx),
        split(test_x, test_y, torch.arange(len(test_y))),
        num_classes=len(class_names),
        input_shape=tuple(train_x.shape[1:]),
        class_names=[str(c) for c in class_names],
        # Pixels 0..255 as they are, normalized with the train split's statistics.
        preprocessing=image_record(channels, size, mean.flatten(), std.flatten(), scale=1),
    )


# --- torchvision's data sets ---------------------------------------------------------------


def _downloadable(name: str, load, summary: str):
    """The builder of torchvision's data set ``name`` (read by ``load(name, root,
    download)``), whose options every downloadable data set shares."""

    def build(
        root: str = "data", download: bool = True, val_fraction: Probability = 0.1, seed: int = 0
    ) -> Splits:
        return _in_memory_splits(load(name, root, download), val_fraction, seed)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"{summary} ``root`` is relative to the working directory. Raises UserError when "
        "the files are missing and cannot be downloaded, saying which file to put where."
    )
    return build


for _name, _load, _summary in (
    (
        "cifar10",
        functools.partial(_load_cifar, fine=False),
        "CIFAR-10: 50,000 train and 10,000 test 32x32 colour images of 10 classes.",
    ),
    (
        "cifar100",
        functools.partial(_load_cifar, fine=True),
        "CIFAR-100: 50,000 train and 10,000 test 32x32 colour images of 100 classes (the "
        "fine labels).",
    ),
    (
        "mnist",
        functools.partial(_load_mnist, fashion=False),
        "MNIST: 60,000 train and 10,000 test 28x28 grey handwritten digits.",
    ),
    (
        "fashion_mnist",
        functools.partial(_load_mnist, fashion=True),
        "Fashion-MNIST: 60,000 train and 10,000 test 28x28 grey images of 10 kinds of clothing.",
    ),
):
    DATASETS.register(_name)(_downloadable(_name, _load, _summary))


# --- image folders -------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# What PIL raises for a file that is not a readable image: UnidentifiedImageError and "image
# file is truncated" are OSErrors; some decoders raise SyntaxError, ValueError or struct.error.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


class WorkerUserError(UserError):
    """A UserError that keeps its one line when a DataLoader worker process raised it.

    The DataLoader re-raises a worker's exception in the main process by calling its class
    with a message of several lines (which worker, then the whole traceback); the last line
    of that traceback holds the original message.
    """

    def __init__(self, message: str):
        if "Original Traceback" in message:
            last_line = message.rstrip().splitlines()[-1]
            message = last_line.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def _report_undecodable(owner_pid: int, splits: list[tuple[list[str], torch.Tensor]]) -> None:
    if os.getpid() != owner_pid:  # a worker's copy of the data set: the main process reports
        return
    bad = [files[i] for files, flags in splits for i in flags.nonzero().flatten().tolist()]
    if bad:
        log.warning(
            f"data imagefolder: {len(bad)} images could not be decoded and were skipped "
            f"(data.on_bad_image=skip); first: {bad[0]}",
            extra=OWN_SHARE,
        )


class UndecodableImages:
    """Which files of an image folder failed to decode, in memory that the DataLoader's worker
    processes share: each bad file is opened once and counted once, however many epochs ask
    for it. The count is logged once, when the data set is released (at the latest when the
    process exits); ``report()`` logs it now."""

    def __init__(self):
        self.splits: list[tuple[list[str], torch.Tensor]] = []
        self.report = weakref.finalize(self, _report_undecodable, os.getpid(), self.splits)

    def track(self, files: list[str]) -> torch.Tensor:
        """A flag per file of one split, True once it failed to decode."""
        flags = torch.zeros(len(files), dtype=torch.bool).share_memory_()
        self.splits.append((files, flags))
        return flags

    def __getstate__(self):  # a spawned worker gets the flags, not the report
        return {"splits": self.splits}


class ImageFolderSplit(Dataset):
    """Image files decoded one at a time; items are ``(image, target, index)``, the image a
    normalized float tensor (3, image_size, image_size).

    Without a ``transform`` (val, test, and train under ``augmentation=none``) an image is
    resized so its shorter side is ``resize`` pixels, then center-cropped to ``image_size``
    (torchvision's ImageNet evaluation: 256, then 224). With one (the train split), the
    transform gets the whole image at that scale instead, and its result is center-cropped to
    ``image_size``: a random-resized or random crop picks the view, any other preset works too.

    The DataLoader fetches whole batches (``__getitems__``), so that a file which cannot be
    decoded can be left out of its batch under ``on_bad_image="skip"``; a batch whose every
    image fails holds the split's next decodable image instead, so no batch is ever empty.
    Under ``"error"`` such a file is a UserError naming it.
    """

    def __init__(
        self,
        files: list[str],
        targets: list[int],
        indices: list[int],
        image_size: int,
        resize: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        on_bad_image: str = "skip",
        undecodable: UndecodableImages | None = None,
    ):
        self.files, self.targets, self.indices = files, targets, indices
        self.image_size, self.resize = image_size, resize
        self.mean, self.std = list(mean), list(std)
        self.transform: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.on_bad_image = on_bad_image
        self.undecodable = UndecodableImages() if undecodable is None else undecodable
        self.failed_to_decode = self.undecodable.track(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self._image(i, skip=False), self.targets[i], self.indices[i]

    def __getitems__(self, batch: list[int]):
        skip = self.on_bad_image == "skip"
        kept = [(i, image) for i in batch if (image := self._image(i, skip)) is not None]
        if not kept:
            kept = [self._next_decodable(batch[-1])]
        return (
            torch.stack([image for _, image in kept]),
            torch.tensor([self.targets[i] for i, _ in kept], dtype=torch.long),
            torch.tensor([self.indices[i] for i, _ in kept], dtype=torch.long),
        )

    def _image(self, i: int, skip: bool) -> torch.Tensor | None:
        """Image ``i`` as a tensor; None when it cannot be decoded and ``skip``."""
        from torchvision.transforms.v2 import functional as F

        if skip and self.failed_to_decode[i]:
            return None  # known to be bad: not opened again
        try:
            with Image.open(self.files[i]) as image:
                # JPEG only: decode at the smallest scale that keeps both sides >= resize,
                # which is several times faster for photographs much larger than the input.
                image.draft("RGB", (self.resize, self.resize))
                image = convert_image(image, "RGB")
        except DECODE_ERRORS as error:
            if not skip:
                hint = ", or set data.on_bad_image=skip" if self.on_bad_image == "error" else ""
                raise WorkerUserError(
                    f"data imagefolder: {self.files[i]} cannot be decoded "
                    f"({_one_line(error)}); delete or replace it{hint}"
                ) from None
            self.failed_to_decode[i] = True
            return None
        image = F.resize(image, self.resize)  # the shorter side
        if self.transform is None:
            image = F.center_crop(image, self.image_size)
        x = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        x = F.normalize(x, self.mean, self.std)
        if self.transform is not None:
            x = F.center_crop(self.transform(x), self.image_size)
        return x

    def _next_decodable(self, after: int) -> tuple[int, torch.Tensor]:
        for step in range(1, len(self) + 1):
            i = (after + step) % len(self)
            image = self._image(i, skip=True)
            if image is not None:
                return i, image
        raise WorkerUserError(
            f"data imagefolder: none of the {len(self)} images of a split can be decoded "
            f"({self.files[0]} among them); replace them with image files"
        )


def _folder_images(folder: Path, classes: list[str], layout: str) -> tuple[list[str], list[int]]:
    """Image paths under ``folder/<class>/`` and their class indices, in sorted order."""
    unknown = sorted({d.name for d in folder.iterdir() if d.is_dir()} - set(classes))
    if unknown:
        raise UserError(
            f"data imagefolder: {folder / unknown[0]} is a class that the train folder lacks; "
            f"every class needs images in train/ ({layout})"
        )
    files, targets = [], []
    for target, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        images = sorted(str(p) for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        files += images
        targets += [target] * len(images)
    return files, targets


@DATASETS.register("imagefolder")
def imagefolder(
    root: str,
    image_size: PositiveInt = 224,
    resize: PositiveInt = 256,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = IMAGENET_STD,
    val_fraction: Probability = 0.1,
    seed: int = 0,
    on_bad_image: Literal["skip", "error"] = "skip",
) -> Splits:
    """Images in class folders: ``root/train/<class>/*.jpg`` plus ``root/val/`` and/or
    ``root/test/`` laid out the same way; classes are the sorted train folder names.

    Without ``test/``, the val folder serves as the test split (as for ImageNet, whose
    labelled "val" set is what papers report). Unless both exist, the val split is
    ``val_fraction`` of the train folder (stratified, seeded). Images are converted to RGB
    (``convert_image``: 16- and 32-bit grey scaled to 8 bits, not clipped).
    ``root`` is relative to the working directory. A file that cannot be decoded is left out
    of its batch and counted (``on_bad_image="skip"``, logged once) or stops the run with a
    UserError naming it (``"error"``).
    """
    base = Path(root)
    layout = f"expected {base}/train/<class>/<image> and {base}/val/ or {base}/test/ alike"
    if resize < image_size:
        raise UserError(
            f"data.resize={resize} is below data.image_size={image_size}; the center crop "
            f"needs resize >= image_size (torchvision's ImageNet evaluation: 256 for 224)"
        )
    if not base.is_dir():
        raise UserError(f"data imagefolder: there is no directory {base}; {layout}")
    train_dir = base / "train"
    classes = []
    if train_dir.is_dir():
        classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"data imagefolder: {train_dir} has no class folders; {layout}")
    if len(classes) == 1:
        raise UserError(
            f"data imagefolder: {train_dir} has one class folder ({classes[0]}); classification "
            f"needs at least 2; {layout}"
        )
    train_files, train_targets = _folder_images(train_dir, classes, layout)
    empty = sorted(set(range(len(classes))) - set(train_targets))
    if empty:
        raise UserError(
            f"data imagefolder: {train_dir / classes[empty[0]]} holds no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); {layout}"
        )
    found = {
        name: _folder_images(base / name, classes, layout)
        for name in ("val", "test")
        if (base / name).is_dir()
    }
    for name, (files, _) in found.items():
        if not files:
            raise UserError(f"data imagefolder: {base / name} holds no images; {layout}")
    if not found:
        raise UserError(f"data imagefolder: {base} has train/ but neither val/ nor test/; {layout}")
    undecodable = UndecodableImages()  # one count for the three splits

    def split(files: list[str], targets: list[int], rows) -> ImageFolderSplit:
        return ImageFolderSplit(
            [files[r] for r in rows],
            [targets[r] for r in rows],
            [int(r) for r in rows],
            image_size,
            resize,
            mean,
            std,
            on_bad_image,
            undecodable,
        )

    test_files, test_targets = found.get("test", found.get("val"))
    test = split(test_files, test_targets, range(len(test_files)))
    if "val" in found and "test" in found:
        train = split(train_files, train_targets, range(len(train_files)))
        val = split(*found["val"], range(len(found["val"][0])))
    else:
        labels = np.asarray(train_targets)
        train_rows, val_rows, _ = stratified_split(labels, val_fraction, 0, seed)
        train = split(train_files, train_targets, train_rows)
        val = split(train_files, train_targets, val_rows)
    return Splits(
        train,
        val,
        test,
        num_classes=len(classes),
        input_shape=(3, image_size, image_size),
        class_names=classes,
        preprocessing=image_record(3, (image_size, image_size), mean, std, resize=resize),
    )
