"""The speed switches: each honoured where it applies, ignored with a note where not."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

from trainkit import config
from trainkit.runner import Runner
from trainkit.speed import Speed

CPU = torch.device("cpu")
SMALL = [
    "data=synthetic",
    "data.num_samples=640",
    "data.val_fraction=0.2",
    "data.test_fraction=0.2",  # 384 train samples: whole batches of 32 and of 64
    "model=mlp",
    "model.hidden=[32]",
    "logger.tensorboard=false",
    "logger.progress_bar=false",
    "trainer.max_epochs=1",
]


def runner(tmp_path, name, *overrides):
    return Runner(config.compose(config.prepare([*SMALL, *overrides])), tmp_path / name)


def test_bf16_autocasts_on_cpu():
    speed = Speed(CPU, "bf16")
    with speed.autocast():
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16
    assert not speed.scaler.is_enabled()


def test_fp16_on_cpu_runs_in_32_bit_with_a_note(caplog):
    with caplog.at_level(logging.INFO, logger="trainkit"):
        speed = Speed(CPU, "fp16")
    assert speed.dtype is None and not speed.scaler.is_enabled()
    assert "trainer.precision=fp16 needs a GPU" in caplog.text
    with speed.autocast():
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_cudnn_benchmark_on_cpu_is_a_note(caplog):
    with caplog.at_level(logging.INFO, logger="trainkit"):
        Speed(CPU, cudnn_benchmark=True)
    assert "cudnn_benchmark applies to CUDA only" in caplog.text


def test_channels_last_reaches_the_model_and_the_inputs():
    speed = Speed(CPU, channels_last=True)
    model = speed.prepare(nn.Conv2d(3, 8, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    assert speed.inputs(torch.randn(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    flat = torch.randn(2, 5)
    assert speed.inputs(flat) is flat


@pytest.mark.parametrize(
    ("samples", "train", "steps"),
    [
        (640, 384, 6),  # whole batches of 32 and of 64
        (600, 360, 6),  # the last step: a batch of 32 and one of 8 (40 samples, not 2 x 32)
        (655, 393, 7),  # the last step: one batch of 9 (it took half its gradient)
    ],
)
def test_accumulating_two_batches_of_32_steps_like_one_batch_of_64(tmp_path, samples, train, steps):
    size = f"data.num_samples={samples}"
    accumulated = runner(tmp_path, "a", size, "data.batch_size=32", "trainer.accumulate=2")
    whole = runner(tmp_path, "b", size, "data.batch_size=64")
    assert len(whole.loaders["train"].dataset) == train
    assert accumulated.steps_per_epoch == whole.steps_per_epoch == steps
    accumulated.train_epoch()
    whole.train_epoch()
    assert accumulated.step == whole.step == steps
    for (name, a), b in zip(
        accumulated.model.state_dict().items(), whole.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), name


def test_bf16_training_on_cpu_learns(tmp_path):
    run = runner(tmp_path, "run", "trainer.precision=bf16", "trainer.max_epochs=3")
    summary = run.fit()
    assert summary["test/acc"] > 0.8


@pytest.mark.slow
def test_compiled_training_matches_eager_training(tmp_path):
    compiled = runner(tmp_path, "compiled", "trainer.compile=true")
    eager = runner(tmp_path, "eager")
    compiled.train_epoch()
    eager.train_epoch()
    for a, b in zip(compiled.model.parameters(), eager.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)


# --- on a GPU ----------------------------------------------------------------------------------

# A small CNN on SMALL's data as 16x16 images, channels-last on the GPU.
ON_A_GPU = [
    *(override for override in SMALL if not override.startswith("model")),
    "model=resnet_cifar",
    "data.shape=[3,16,16]",
    "trainer.device=cuda",
    "trainer.channels_last=true",
]


def gpu_runner(tmp_path, *overrides):
    return Runner(config.compose(config.prepare([*ON_A_GPU, *overrides])), tmp_path / "run")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_learns(tmp_path, precision):
    run = gpu_runner(tmp_path, f"trainer.precision={precision}", "trainer.max_epochs=3")
    assert run.speed.scaler.is_enabled() == (precision == "fp16")
    assert run.fit()["test/acc"] > 0.8


@pytest.mark.gpu
def test_compile_and_channels_last_on_cuda(tmp_path):
    run = gpu_runner(
        tmp_path, "trainer.compile=true", "trainer.precision=bf16", "trainer.max_epochs=3"
    )
    assert run.fit()["test/acc"] > 0.5


FAULTS_PER_STEP = """
import resource, sys, torch
import torch.nn.functional as F
from trainkit.models.resnet import resnet_cifar
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    from trainkit.speed import Speed
    Speed(torch.device("cpu"))
model = resnet_cifar(num_classes=10, input_shape=(1, 32, 32), depth=8)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
inputs, targets = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))
def step():
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
for _ in range(5):  # the heap settles in the first few
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_cpu_runs_reuse_freed_memory_instead_of_faulting_it_in_again():
    # Each in a fresh process: the allocator settings are the process's.
    def faults(mode: str) -> float:
        result = subprocess.run(
            [sys.executable, "-c", FAULTS_PER_STEP, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(result.stdout)

    # glibc's default hands a step's freed activations back and faults them in again
    # (thousands a step; once, on a loaded machine, 605: the larger of two measures).
    default = max(faults("default"), faults("default"))
    assert default > 1000
    assert faults("keep") < default / 20
