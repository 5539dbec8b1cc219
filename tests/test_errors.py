"""Errors that become one line: out of memory, in torch's words and in libraries'."""

from __future__ import annotations

import pytest
import torch

from trainkit.errors import is_out_of_memory, out_of_memory

GPU = (
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.81 "
    "GiB of which 3.25 GiB is free. Including non-PyTorch memory, this process has 136.5 GiB"
)
CPU = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 1073741824000 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (torch.OutOfMemoryError(GPU), "the GPU (asked for 20.00 GiB; 3.25 GiB of 139.81 GiB free)"),
        (RuntimeError(CPU), "the machine (asked for 1000.00 GiB)"),
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be ..."), "the GPU"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "the GPU"),
    ],
)
def test_out_of_memory_is_one_line_with_torchs_figures(error, said):
    assert is_out_of_memory(error)
    message = str(out_of_memory(error, "lower data.batch_size"))
    assert message == f"out of memory on {said}; lower data.batch_size"
    assert "\n" not in message


@pytest.mark.parametrize(
    "error", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("memory")]
)
def test_other_errors_are_not_taken_for_it(error):
    assert not is_out_of_memory(error)
