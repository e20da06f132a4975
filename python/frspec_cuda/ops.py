"""Public op wrappers: CUDA tensors go to `torch.ops.frspec_cuda.*` (the compiled
kernels), CPU tensors to the PyTorch reference. Fake (meta) implementations let
`torch.compile` trace the CUDA ops without running them."""

from __future__ import annotations

import torch

from . import _library, reference

# Ops that have a CUDA kernel in csrc/ (`frspec info` reports which are loaded).
KERNEL_OPS = ("merge_attention_states",)


def merge_attention_states(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attention results over disjoint key sets.

    out_a, out_b: [tokens, heads, head_dim] (fp16/bf16 on CUDA; also fp32/fp64 on CPU).
    lse_a, lse_b: [tokens, heads] fp32, natural-log sum-exp of each side's scaled scores.
    Returns (out, lse) of attention over the union. A side with lse = -inf is empty.
    """
    if out_a.device.type == "cuda":
        _library.require_kernel("merge_attention_states")
        return torch.ops.frspec_cuda.merge_attention_states(out_a, lse_a, out_b, lse_b)
    return reference.merge_attention_states(out_a, lse_a, out_b, lse_b)


if _library.LOADED:

    @torch.library.register_fake("frspec_cuda::merge_attention_states")
    def _merge_attention_states_fake(out_a, lse_a, out_b, lse_b):
        return torch.empty_like(out_a), torch.empty_like(lse_a)
