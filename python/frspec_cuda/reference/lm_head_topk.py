"""Reference for `fr_lm_head_topk`: the FR-Spec draft head.

logits = hidden @ weight.T over the K rows of the (sliced) LM head, log-softmax over
those K logits, and the k best, sorted by log-probability descending with ties going
to the lower draft index; draft indices map to token ids through `ids`.
"""

from __future__ import annotations

import torch

from ._checks import check_tensors_on_one_device

MAX_ROWS_PER_CALL = 64
MAX_K = 64


def check_lm_head_inputs(hidden, weight, ids, k) -> None:
    check_tensors_on_one_device(hidden=hidden, weight=weight, ids=ids)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [n, hidden_size], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [K, hidden_size], got shape {tuple(weight.shape)}")
    if ids.dim() != 1:
        raise ValueError(f"ids must be [K], got shape {tuple(ids.shape)}")
    if not hidden.is_floating_point() or weight.dtype != hidden.dtype:
        raise ValueError(f"hidden and weight must share a floating dtype, got {hidden.dtype} and {weight.dtype}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must be int32, got {ids.dtype}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight has hidden size {weight.shape[1]} but hidden has {hidden.shape[1]}")
    if ids.shape[0] != weight.shape[0]:
        raise ValueError(f"ids has {ids.shape[0]} entries but weight has {weight.shape[0]} rows")
    K = weight.shape[0]
    if not isinstance(k, int) or not 1 <= k <= min(MAX_K, K):
        raise ValueError(f"k must be in [1, min({MAX_K}, K={K})], got {k}")


def fr_lm_head_topk(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    check_lm_head_inputs(hidden, weight, ids, k)
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logprobs = torch.log_softmax(hidden.to(acc) @ weight.to(acc).T, dim=-1)
    values, index = torch.sort(logprobs, dim=-1, descending=True, stable=True)
    return ids.long()[index[:, :k]], values[:, :k].float()
