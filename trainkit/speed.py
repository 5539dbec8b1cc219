"""The speed switches: mixed precision, channels-last memory, torch.compile and cuDNN
autotuning. Each one applies where the device supports it and is otherwise ignored with a
note in the log, so one recipe runs on a laptop and on a GPU server alike."""

from __future__ import annotations

import ctypes
import functools
import sys
from contextlib import AbstractContextManager

import torch
from torch import nn

from trainkit.reporting import log


class Speed:
    """Built from the trainer settings for one device; the runner asks it how to run."""

    def __init__(
        self,
        device: torch.device,
        precision: int | str = 32,
        channels_last: bool = False,
        compile: bool = False,
        cudnn_benchmark: bool = False,
        deterministic: bool = False,
    ):
        self.device = device
        if device.type == "cpu":
            keep_freed_memory()
        self.dtype = {32: None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if self.dtype is torch.float16 and device.type != "cuda":
            # CPU float16 matmuls are slow and need a loss scaler that only CUDA gets right.
            log.info("note: trainer.precision=fp16 needs a GPU; training in 32-bit (try bf16)")
            self.dtype = None
        if self.dtype is torch.bfloat16 and device.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                log.info("note: this GPU has no bfloat16; trainer.precision=bf16 runs in 32-bit")
                self.dtype = None
        # Float16 gradients underflow without loss scaling; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.channels_last = channels_last
        self.compile = compile
        if cudnn_benchmark:
            if device.type != "cuda":
                log.info("note: trainer.cudnn_benchmark applies to CUDA only; ignored on CPU")
            elif deterministic:
                log.info("note: trainer.deterministic=true turns trainer.cudnn_benchmark off")
            else:
                torch.backends.cudnn.benchmark = True  # autotune convolutions for fixed shapes

    def autocast(self) -> AbstractContextManager:
        """The forward pass in the chosen precision (a no-op at 32 bits)."""
        return torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last and batch.ndim == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model in channels-last memory, when asked (images: faster convolutions)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def compiled(self, model: nn.Module) -> nn.Module:
        """``torch.compile``'d for training when asked: the first steps compile, later
        steps run fused kernels."""
        return torch.compile(model) if self.compile else model


@functools.cache
def keep_freed_memory() -> None:
    """Let glibc keep the memory that a CPU step frees, for the next step to reuse.

    By default glibc hands large freed blocks (a batch's activations) back to the operating
    system and takes them again on the next step: thousands of page faults a step, several
    percent of a small model's step time. With fixed thresholds, blocks up to 32 MiB stay in
    the process, as they would with jemalloc or tcmalloc (which PyTorch's CPU tuning guide
    suggests). glibc only: other C libraries (macOS, musl) are left as they are.
    """
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library python runs on
    if mallopt is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest
    mallopt(m_trim_threshold, 1 * 2**30)  # trimmed only when this much is free
