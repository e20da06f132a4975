"""Public op wrappers: CUDA tensors go to `torch.ops.frspec_cuda.*` (the compiled
kernels), CPU tensors to the PyTorch reference. Fake (meta) implementations let
`torch.compile` trace the CUDA ops without running them."""

from __future__ import annotations

import torch

from . import _library, reference

# Ops that have a CUDA kernel in csrc/ (`frspec info` reports which are loaded).
KERNEL_OPS = ("merge_attention_states", "fr_lm_head_topk", "build_dynamic_tree", "tree_attention",
              "verify_tree_greedy", "verify_tree_sampling", "compact_kv_cache", "apb_attention", "rms_norm",
              "add_rms_norm", "silu_and_mul", "rope_qk_store_kv", "gemv", "gemv_silu_and_mul",
              "rms_norm_gemv")


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


def fr_lm_head_topk(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, k: int, *, vocab_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FR-Spec draft head: the k most likely tokens under log-softmax(hidden @ weight.T).

    hidden: [n, H]; weight: [K, H] the (frequency-sliced) LM head, row i scoring token
    ids[i]; ids: [K] int32. Returns token_ids [n, k] int64 and logprobs [n, k] fp32
    (normalised over the K rows), sorted descending, ties to the lower row. On CUDA one
    fused kernel reads the weight once per 64 hidden rows. With `vocab_size`, `ids` are
    checked to lie in [0, vocab_size) (one device sync; vocabularies loaded with
    `frspec_cuda.vocab` are checked at load time, so hot loops leave it out).
    """
    if vocab_size is not None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"ids must lie in [0, vocab_size={vocab_size}), got range [{lo}, {hi}]")
    if hidden.device.type != "cuda":
        return reference.fr_lm_head_topk(hidden, weight, ids, k)
    _library.require_kernel("fr_lm_head_topk")
    rows_per_call = reference.lm_head_topk.MAX_ROWS_PER_CALL  # the kernel's limit
    if hidden.dim() != 2 or hidden.shape[0] <= rows_per_call:
        return torch.ops.frspec_cuda.fr_lm_head_topk(hidden, weight, ids, k)
    parts = [torch.ops.frspec_cuda.fr_lm_head_topk(h, weight, ids, k) for h in hidden.split(rows_per_call)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


if _library.LOADED:

    @torch.library.register_fake("frspec_cuda::merge_attention_states")
    def _merge_attention_states_fake(out_a, lse_a, out_b, lse_b):
        return torch.empty_like(out_a), torch.empty_like(lse_a)

    @torch.library.register_fake("frspec_cuda::fr_lm_head_topk")
    def _fr_lm_head_topk_fake(hidden, weight, ids, k):
        n = hidden.shape[0]
        return hidden.new_empty((n, k), dtype=torch.long), hidden.new_empty((n, k), dtype=torch.float)
