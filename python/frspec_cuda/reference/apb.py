"""Reference for `apb_attention`: the attention of one APB host (Huang et al., ACL 2025).

Host r holds Q = [anchor; local] (anchor_len + local_len rows) and
K/V = [passing; anchor; local] (passing_len + anchor_len + local_len rows), where the
passing blocks are the compressed KV of earlier hosts. Anchor queries attend causally
within the anchor only; local queries attend to all of passing, all of the anchor, and
causally within local. anchor_len = passing_len = 0 is plain causal attention (host 0).
GQA: Hq is a multiple of Hkv. Returns out [Tq, Hq, D] (dtype of q) and lse [Tq, Hq] fp32.
"""

from __future__ import annotations

import math

import torch


def apb_mask(anchor_len: int, local_len: int, passing_len: int, device=None) -> torch.Tensor:
    """[anchor+local, passing+anchor+local] bool: which keys each query row may see."""
    Tq, Tk = anchor_len + local_len, passing_len + anchor_len + local_len
    q = torch.arange(Tq, device=device).unsqueeze(1)
    k = torch.arange(Tk, device=device).unsqueeze(0)
    is_anchor_q = q < anchor_len
    # anchor rows: keys in the anchor segment, causal
    anchor_rows = (k >= passing_len) & (k < passing_len + anchor_len) & (k - passing_len <= q)
    # local rows: all passing, all anchor, causal within local
    local_idx = q - anchor_len
    local_rows = (k < passing_len + anchor_len) | (k - passing_len - anchor_len <= local_idx)
    return torch.where(is_anchor_q, anchor_rows, local_rows)


def check_apb(q, k, v, anchor_len: int, passing_len: int) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"q must be [Tq, Hq, D] and k, v [Tk, Hkv, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if anchor_len < 0 or passing_len < 0:
        raise ValueError(f"anchor_len and passing_len must be >= 0, got {anchor_len}, {passing_len}")
    local_len = q.shape[0] - anchor_len
    if local_len < 0:
        raise ValueError(f"q has {q.shape[0]} rows, fewer than anchor_len {anchor_len}")
    if k.shape[0] != passing_len + anchor_len + local_len:
        raise ValueError(f"k must have passing_len + anchor_len + local_len = {passing_len + anchor_len + local_len} "
                         f"rows, got {k.shape[0]}")
    if q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"head_dim must match and q heads ({q.shape[1]}) be a multiple of kv heads ({k.shape[1]})")


def apb_attention(q, k, v, anchor_len: int, passing_len: int, scale: float | None = None):
    check_apb(q, k, v, anchor_len, passing_len)
    Tq, Hq, D = q.shape
    G = Hq // k.shape[1]
    scale = 1 / math.sqrt(D) if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    mask = apb_mask(anchor_len, Tq - anchor_len, passing_len, q.device)
    s = torch.einsum("qhd,khd->hqk", q.to(acc), k.to(acc).repeat_interleave(G, 1)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)  # [Hq, Tq]
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)
    out = torch.einsum("hqk,khd->qhd", p, v.to(acc).repeat_interleave(G, 1))
    return out.to(q.dtype), lse.T.to(torch.float64 if acc == torch.float64 else torch.float32)
