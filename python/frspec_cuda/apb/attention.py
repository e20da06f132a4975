"""`apb_attention`: the attention of one APB host, and the plain attentions the decode
(query) phase needs, each returning (out, lse) so partial results merge exactly."""

from __future__ import annotations

import torch

from .. import _library
from ..reference import apb as ref


IMPLS = {"auto": 0, "mma": 1, "wgmma": 2, "wgmma_ws": 3, "wgmma_pingpong": 4, "wgmma_pingpong_windows": 5,
         "wgmma_pingpong_overlap": 6}


def apb_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, anchor_len: int, passing_len: int,
                  scale: float | None = None, *, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one APB host.

    q [anchor_len + local_len, Hq, D]; k, v [passing_len + anchor_len + local_len, Hkv, D].
    Anchor queries see the anchor causally; local queries see all passing keys, all anchor
    keys and the local block causally (anchor_len = passing_len = 0: causal attention).
    Returns out [Tq, Hq, D] (q's dtype) and lse [Tq, Hq] fp32 (natural log). On CUDA one
    kernel (D 64/128, fp16/bf16, GQA, any lengths) that skips fully masked tiles: on Hopper
    with D 128 the warp-specialised TMA + wgmma kernel with ping-pong consumers that issue
    each P V behind the next Q K^T ("auto" = "wgmma_pingpong_overlap"), else mma.sync
    ("mma"); "wgmma", "wgmma_ws", "wgmma_pingpong", "wgmma_pingpong_windows" are variants
    kept for measurement (bench/NOTES.md). On CPU the PyTorch reference."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not q.is_cuda:
        return ref.apb_attention(q, k, v, anchor_len, passing_len, scale)
    _library.require_kernel("apb_attention")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {sorted(IMPLS)}, got {impl!r}")
    return torch.ops.frspec_cuda.apb_attention(q, k, v, int(anchor_len), int(passing_len), scale, IMPLS[impl])


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal_offset: int | None = None,
                       scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q [Tq, Hq, D] over k, v [Tk, Hkv, D]; every key visible, or with `causal_offset` c
    query i sees keys j <= c + i. Returns out [Tq, Hq, D] and lse [Tq, Hq] fp32. On CUDA
    the causal case (and any single query) runs on the APB kernel; the rest in PyTorch."""
    Tq, Tk = q.shape[0], k.shape[0]
    if Tk == 0:
        return torch.zeros_like(q), q.new_full(q.shape[:2], float("-inf"), dtype=torch.float32)
    if q.is_cuda and _library.has_kernel("apb_attention") and q.shape[-1] in (64, 128) and q.dtype in (
            torch.float16, torch.bfloat16):
        if causal_offset is not None and causal_offset + Tq == Tk:
            return apb_attention(q, k.contiguous(), v.contiguous(), 0, causal_offset, scale)
        if Tq == 1 and (causal_offset is None or causal_offset + 1 >= Tk) and _library.has_kernel("tree_attention"):
            return _decode_attention(q, k, v, scale)
        if causal_offset is None and Tq == 1:
            return apb_attention(q, k.contiguous(), v.contiguous(), 0, Tk - 1, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    G = q.shape[1] // k.shape[1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.einsum("qhd,khd->hqk", q.to(acc), k.to(acc).repeat_interleave(G, 1)) * scale
    if causal_offset is not None:
        keep = torch.arange(Tk, device=q.device) <= causal_offset + torch.arange(Tq, device=q.device).unsqueeze(1)
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)
    out = torch.einsum("hqk,khd->qhd", p, v.to(acc).repeat_interleave(G, 1))
    return out.to(q.dtype), lse.T.contiguous().to(torch.float32 if acc == torch.float32 else acc)


def _decode_attention(q, k, v, scale):
    """One query over all of k, v [Tk, Hkv, D] on the split-K tree-attention kernel (a
    one-node tree whose own key is the last one): fills the GPU where a 128-row prefill
    tile would hold a single row."""
    from .. import tree

    Tk = k.shape[0]
    cache_len = torch.full((1,), Tk - 1, dtype=torch.int32, device=q.device)
    mask = torch.ones(1, 1, 1, dtype=torch.long, device=q.device)
    out, lse = tree.tree_attention(q[None], k[None], v[None], cache_len, mask, scale, validate=False)
    return out[0], lse[0]


def attention_flops(anchor_len: int, local_len: int, passing_len: int, head_dim: int, q_heads: int) -> float:
    """Useful FLOPs of apb_attention (4 * D per visible query-key pair per head)."""
    A, L, P = anchor_len, local_len, passing_len
    pairs = A * (A + 1) / 2 + L * (P + A) + L * (L + 1) / 2
    return 4.0 * head_dim * q_heads * pairs


def _fake(q, k, v, anchor_len, passing_len, scale, impl=0):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


if _library.LOADED:
    torch.library.register_fake("frspec_cuda::apb_attention")(_fake)


__all__ = ["apb_attention", "attention_with_lse", "attention_flops"]
