"""Shared test helpers: GPU gating and output poisoning.

GPU tests skip cleanly where there is no CUDA device or the kernels were not built.
"""

from __future__ import annotations

import pytest
import torch

from frspec_cuda import _library

HAS_CUDA = torch.cuda.is_available()


def requires_kernel(op: str):
    """Skip unless a CUDA device exists and `op`'s kernel is loaded."""
    reason = "no CUDA device" if not HAS_CUDA else f"CUDA kernel for {op} not built ({_library.build_mode()})"
    return pytest.mark.skipif(not (HAS_CUDA and _library.has_kernel(op)), reason=reason)


def poison_cuda_allocator(nbytes: int = 256 << 20) -> None:
    """Fill freed blocks of torch's caching allocator with NaN bytes, so an op's
    torch.empty outputs start as NaN rather than as whatever happened to be there:
    an element the kernel forgets to write then fails the comparison."""
    blocks = [torch.empty(nbytes >> k, dtype=torch.uint8, device="cuda") for k in range(0, 12, 2)]
    for b in blocks:
        b.fill_(0xFF)  # 0xFFFF is NaN in fp16/bf16, 0xFFFFFFFF is NaN in fp32
    del blocks
    # keep the blocks cached (no empty_cache) so the next allocations reuse them
