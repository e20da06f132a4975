"""Fused decoder-layer pieces (`frspec_cuda.decoder`): the PyTorch semantics, written as
the eager Hugging Face Llama layer computes them (same roundings to the model dtype)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm: normalise in fp32, round to x's dtype, then scale by weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the residual add fused with the next norm."""
    s = x + residual
    return rms_norm(s, weight, eps), s


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2 I] (the fused gate and up projections) -> silu(gate) * up [..., I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (HF convention): x [..., T, H, D], positions [..., T]."""
    freqs = positions.to(torch.float32).unsqueeze(-1) * inv_freq.to(x.device)  # [..., T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(-2)  # [..., T, 1, D]
    cos, sin = emb.cos(), emb.sin()
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def rope_qk_store_kv(qkv: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, slots: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int) -> torch.Tensor:
    """qkv [B, T, (Hq + 2 Hkv) D] -> q [B, T, Hq, D] with RoPE at `positions`; in place,
    the rotated keys and the values go to k_cache / v_cache [B, L, Hkv, D] at `slots`
    [B, T] (a slot outside [0, L) is not written; selecting the valid ones syncs a CUDA
    device, so fp32 CUDA models, which run this, are not CUDA-graph capturable)."""
    B, L, Hkv, D = k_cache.shape
    T = qkv.shape[1]
    heads = qkv.view(B, T, num_heads + 2 * Hkv, D)
    q = rope(heads[:, :, :num_heads], positions, inv_freq)
    k = rope(heads[:, :, num_heads:num_heads + Hkv], positions, inv_freq)
    v = heads[:, :, num_heads + Hkv:]
    ok = (slots >= 0) & (slots < L)
    b = torch.arange(B, device=qkv.device).unsqueeze(1).expand(B, T)[ok]
    s = slots[ok]
    k_cache[b, s] = k[ok]
    v_cache[b, s] = v[ok]
    return q.contiguous()


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """One row times a weight matrix: x [..., K] (one row) @ weight [N, K].T (+ bias [N])."""
    if x.numel() != x.shape[-1]:
        raise ValueError(f"gemv takes one row: x must be [..., {x.shape[-1]}] with one row, got {tuple(x.shape)}")
    return F.linear(x, weight, bias)


def gemv_silu_and_mul(x: torch.Tensor, gate_up_weight: torch.Tensor) -> torch.Tensor:
    """silu_and_mul of one row's fused [gate; up] projection."""
    return silu_and_mul(gemv(x, gate_up_weight))
