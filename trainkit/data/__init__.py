"""Data sets, their train/val/test splits, and the loaders that feed the runner.

Every dataset builder returns a ``Splits``: three torch Datasets whose items are
``(input, target, index)``, where ``index`` is the sample's position in the original data
set (it becomes the ``index`` column of predictions.csv), plus what the model needs to
know about the data (number of classes, input shape, vocabulary size).

- ``splits``: the ``Splits`` type, in-memory splits, the stratified split.
- ``bundled``: data sets that need no download (scikit-learn's, synthetic).
- ``vision``: torchvision's downloadable data sets and image folders.
- ``text``: text classification from CSV or JSONL files.
- ``loaders``: DataLoaders, or the split held on the device and batched there
  (``data.on_device``); the data node's loader settings are in ``trainkit.settings``.
"""

from trainkit.data import bundled, text, vision  # noqa: F401  (registers the data sets)
from trainkit.data.bundled import breast_cancer, digits, synthetic
from trainkit.data.loaders import build_loaders, stop_workers
from trainkit.data.splits import Splits, TensorSplit, stratified_split, tensor_splits
from trainkit.settings import LoaderSettings, split_data_node

__all__ = [
    "LoaderSettings",
    "Splits",
    "TensorSplit",
    "breast_cancer",
    "build_loaders",
    "digits",
    "split_data_node",
    "stop_workers",
    "stratified_split",
    "synthetic",
    "tensor_splits",
]
