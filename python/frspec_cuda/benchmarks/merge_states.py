"""merge_attention_states: our kernel vs the same math in torch (eager, and compiled
where Triton exists), in GB/s against the copy bandwidth measured in the same run."""

from __future__ import annotations

import torch

from .. import _library, ops, reference
from .timing import copy_bandwidth_gbs, n_sets, time_us


def _inputs(tokens: int, heads: int, dim: int, dtype, device, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    out_a = torch.randn(tokens, heads, dim, dtype=dtype, device=device, generator=g)
    out_b = torch.randn(tokens, heads, dim, dtype=dtype, device=device, generator=g)
    lse_a = torch.randn(tokens, heads, device=device, generator=g) * 4
    lse_b = torch.randn(tokens, heads, device=device, generator=g) * 4
    return out_a, lse_a, out_b, lse_b


def run(device: torch.device, quick: bool = False) -> list[dict]:
    heads, dim = 32, 128
    dtype = torch.bfloat16
    token_counts = [1, 60, 1024, 8192] if quick else [1, 60, 1024, 8192, 32768]
    if device.type != "cuda":
        token_counts = [1, 60, 1024]
    copy_gbs = copy_bandwidth_gbs(device)
    impls = {"torch eager": reference.merge_attention_states}
    if device.type == "cuda":
        if _library.has_kernel("merge_attention_states"):
            impls = {"frspec_cuda": ops.merge_attention_states, **impls}
        try:
            import triton  # noqa: F401

            impls["torch.compile"] = torch.compile(reference.merge_attention_states, dynamic=False)
        except ImportError:
            pass
    rows = []
    for tokens in token_counts:
        elem = torch.finfo(dtype).bits // 8
        nbytes = 3 * tokens * heads * dim * elem + 3 * tokens * heads * 4
        sets = [_inputs(tokens, heads, dim, dtype, device, s) for s in range(n_sets(nbytes, device))]
        for name, fn in impls.items():
            us = time_us(lambda i: fn(*sets[i % len(sets)]), device)
            gbs = nbytes / (us * 1e3)
            rows.append(
                dict(op="merge_attention_states", impl=name, shape=f"{tokens}x{heads}x{dim}",
                     time_us=round(us, 2), gbs=round(gbs, 1), of_copy=round(gbs / copy_gbs, 3),
                     copy_gbs=round(copy_gbs, 1))
            )
    return rows
