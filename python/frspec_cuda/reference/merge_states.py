"""Reference for `merge_attention_states`: combining attention over disjoint key sets.

For keys split into A and B with partial results (out_a, lse_a), (out_b, lse_b),
attention over A u B is the LSE-weighted blend
    w_b = sigmoid(lse_b - lse_a),  out = (1 - w_b) out_a + w_b out_b,
    lse = max(lse_a, lse_b) - logsigmoid(|lse_a - lse_b|).
This form never exponentiates an LSE, so it cannot overflow. A side with lse = -inf saw
no keys: the result is the other side exactly (its `out` is ignored, it may be NaN);
both empty gives out = 0 and lse = -inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_tensors_on_one_device

_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_merge_inputs(out_a, lse_a, out_b, lse_b) -> None:
    """The input contract shared by the reference and the CUDA op (which checks it again
    in C++, with the extra requirements of a kernel: CUDA, contiguous, fp16/bf16)."""
    check_tensors_on_one_device(out_a=out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)
    if out_a.dim() != 3:
        raise ValueError(f"out_a must be [tokens, heads, head_dim], got shape {tuple(out_a.shape)}")
    if out_b.shape != out_a.shape:
        raise ValueError(f"out_b shape {tuple(out_b.shape)} must equal out_a shape {tuple(out_a.shape)}")
    if out_a.dtype not in _OUT_DTYPES or out_b.dtype != out_a.dtype:
        raise ValueError(f"out_a/out_b must share a floating dtype, got {out_a.dtype} and {out_b.dtype}")
    rows = tuple(out_a.shape[:2])
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        if t.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{name} must be float32, got {t.dtype}")
        if tuple(t.shape) != rows:
            raise ValueError(f"{name} must be [tokens, heads] = {list(rows)}, got shape {tuple(t.shape)}")


def merge_attention_states(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    check_merge_inputs(out_a, lse_a, out_b, lse_b)
    # Compute in fp32 (fp64 for fp64 inputs), round once at the end.
    acc = torch.float64 if torch.float64 in (out_a.dtype, lse_a.dtype) else torch.float32
    la, lb = lse_a.to(acc), lse_b.to(acc)
    oa, ob = out_a.to(acc), out_b.to(acc)
    empty_a = (la == float("-inf")).unsqueeze(-1)
    empty_b = (lb == float("-inf")).unsqueeze(-1)
    w_b = torch.sigmoid(lb - la).unsqueeze(-1)
    blend = (1 - w_b) * oa + w_b * ob
    out = torch.where(empty_a, ob, torch.where(empty_b, oa, blend))
    out = torch.where(empty_a & empty_b, torch.zeros_like(out), out)
    lse = torch.maximum(la, lb) - F.logsigmoid((la - lb).abs())
    lse = torch.where((la == float("-inf")) & (lb == float("-inf")), la, lse)
    return out.to(out_a.dtype), lse.to(lse_a.dtype)
