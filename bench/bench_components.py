"""The benchmark's two trainkit plugins (``plugins=[bench_components]``, with bench/ on the path).

- ``data=digits32``: scikit-learn's digits upsampled to 32x32, the benchmark's workload.
  trainkit's own ``data=digits`` is 8x8 and no data option resizes it (an augmentation
  resizes only the train split, while the model is built for the data's input shape).
- ``regularization=[first_step_probe]``: after the first optimizer step, writes the wall
  clock time (``time.time()``) to the file named by ``$TRAINKIT_BENCH_FIRST_STEP`` and ends
  the process at once: how long ``trainkit train`` takes from start to its first step.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from trainkit.data import Splits, tensor_splits
from trainkit.registry import DATASETS, REGULARIZERS, PositiveInt, Probability
from trainkit.regularization import Regularizer


@DATASETS.register("digits32")
def digits32(
    size: PositiveInt = 32,
    val_fraction: Probability = 0.15,
    test_fraction: Probability = 0.15,
    seed: int = 0,
) -> Splits:
    """The 1,797 8x8 digits, bilinearly upsampled to ``size`` x ``size`` pixels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images[:, None, :, :] / 16.0, dtype=torch.float32)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    (train, val, test), _ = tensor_splits(
        images.numpy(), bunch.target, val_fraction, test_fraction, seed
    )
    names = [str(c) for c in bunch.target_names]
    return Splits(train, val, test, num_classes=10, input_shape=(1, size, size), class_names=names)


@REGULARIZERS.register("first_step_probe")
class FirstStepProbe(Regularizer):
    """Records the time of the first optimizer step, then ends the process (exit status 0)."""

    def after_optimizer_step(self, model: torch.nn.Module) -> None:
        now = time.time()
        path = os.environ.get("TRAINKIT_BENCH_FIRST_STEP")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(f"{now!r}\n")
        os._exit(0)  # nothing after the first step is being measured
