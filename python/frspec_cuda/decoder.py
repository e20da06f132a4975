"""The pieces of a Llama decoder layer as fused kernels: RMSNorm, residual add + RMSNorm,
SiLU-and-mul, RoPE on the fused q/k/v projection with the K/V-cache store, and the one-row
matrix products of a batch-1 decode step (a streaming GEMV, optionally with silu * up in
its epilogue or the residual add + RMSNorm in its prologue). On CUDA each is one kernel
(`csrc/include/frspec/decoder.cuh`) for fp16 / bf16, which is what brings a CUDA-graph
decode step near the weight-read floor; CPU tensors and fp32 run the reference (and
several rows go to cuBLAS). Results equal the eager PyTorch layer's up to the order of the
reductions (RMSNorm, the GEMV's dot products)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from . import _library
from .reference import decoder as ref

_KERNEL_DTYPES = (torch.float16, torch.bfloat16)
# One-row products go to our GEMV (`linear`); benchmarks set this False to compare with cuBLAS.
GEMV_ENABLED = True


def _kernel(t: torch.Tensor, op: str) -> bool:
    if not (t.is_cuda and t.dtype in _KERNEL_DTYPES):
        return False
    _library.require_kernel(op)
    return True


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not _kernel(x, "rms_norm"):
        return ref.rms_norm(x, weight, eps)
    return torch.ops.frspec_cuda.rms_norm(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual); nothing is modified in place."""
    if not _kernel(x, "add_rms_norm"):
        return ref.add_rms_norm(x, residual, weight, eps)
    return torch.ops.frspec_cuda.add_rms_norm(x, residual, weight, eps)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    if not _kernel(gate_up, "silu_and_mul"):
        return ref.silu_and_mul(gate_up)
    return torch.ops.frspec_cuda.silu_and_mul(gate_up)


def rope_qk_store_kv(qkv: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, slots: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int) -> torch.Tensor:
    """qkv [B, T, (num_heads + 2 Hkv) D], positions / slots [B, T] int64, inv_freq [D / 2]
    fp32, caches [B, L, Hkv, D] (written in place at `slots`; a slot outside [0, L) writes
    nothing, so callers need no device sync to bounds-check) -> rotated q [B, T, num_heads, D]."""
    if not _kernel(qkv, "rope_qk_store_kv"):
        return ref.rope_qk_store_kv(qkv, positions, inv_freq, slots, k_cache, v_cache, num_heads)
    return torch.ops.frspec_cuda.rope_qk_store_kv(qkv, positions.contiguous(), inv_freq, slots.contiguous(), k_cache,
                                                  v_cache, num_heads)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias). A single row (a batch-1 decode step) on CUDA fp16/bf16 runs
    our GEMV kernel, which streams the weight once with the next kernel's start overlapped
    (programmatic dependent launch); everything else is F.linear (cuBLAS)."""
    if _one_row_kernel(x, weight, "gemv"):
        return torch.ops.frspec_cuda.gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def _one_row_kernel(x: torch.Tensor, weight: torch.Tensor, op: str) -> bool:
    K = x.shape[-1]
    return (GEMV_ENABLED and x.is_cuda and x.dtype in _KERNEL_DTYPES and x.numel() == K and K % 8 == 0
            and weight.dtype == x.dtype and weight.is_contiguous() and x.is_contiguous()
            and weight.data_ptr() % 16 == 0 and x.data_ptr() % 16 == 0 and op in _library.CUDA_KERNELS)


def linear_silu_and_mul(x: torch.Tensor, gate_up_weight: torch.Tensor) -> torch.Tensor:
    """silu_and_mul(F.linear(x, gate_up_weight)): the first half of a SwiGLU MLP with fused
    [gate; up] weights. One row on CUDA fp16/bf16: one GEMV kernel that applies silu * up to
    its two rows' results (no [2 I] intermediate, no second kernel)."""
    if _one_row_kernel(x, gate_up_weight, "gemv_silu_and_mul"):
        return torch.ops.frspec_cuda.gemv_silu_and_mul(x, gate_up_weight)
    return silu_and_mul(F.linear(x, gate_up_weight))


def rms_norm_linear(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                    weight: torch.Tensor, bias: torch.Tensor | None = None,
                    silu_and_mul: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(rms_norm(s)), s) with s = x + residual (or x): a decoder layer's residual add,
    norm and the projection after it (silu_and_mul(linear(...)) with fused [gate; up] weights
    when silu_and_mul). One row on CUDA fp16/bf16 (hidden <= 16384): one GEMV kernel whose
    blocks each normalise the row themselves; otherwise add_rms_norm / rms_norm, then
    `linear` / `linear_silu_and_mul`."""
    K = x.shape[-1]
    if (K <= 16384 and norm_weight.dtype == x.dtype and norm_weight.is_contiguous()
            and norm_weight.data_ptr() % 16 == 0 and norm_weight.shape == (K,)
            and (residual is None or (residual.shape == x.shape and residual.dtype == x.dtype
                                      and residual.is_contiguous() and residual.data_ptr() % 16 == 0))
            and (bias is None or not silu_and_mul) and _one_row_kernel(x, weight, "rms_norm_gemv")):
        y, s = torch.ops.frspec_cuda.rms_norm_gemv(x, residual, norm_weight, eps, weight, bias, silu_and_mul)
        return y, (x if residual is None else s)
    if residual is None:
        h, s = rms_norm(x, norm_weight, eps), x
    else:
        h, s = add_rms_norm(x, residual, norm_weight, eps)
    return (linear_silu_and_mul(h, weight) if silu_and_mul else linear(h, weight, bias)), s


def gemv_silu_and_mul(x: torch.Tensor, gate_up_weight: torch.Tensor) -> torch.Tensor:
    """The fused op itself (one row); the reference elsewhere."""
    if not _kernel(x, "gemv_silu_and_mul"):
        return ref.gemv_silu_and_mul(x, gate_up_weight)
    return torch.ops.frspec_cuda.gemv_silu_and_mul(x, gate_up_weight)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The GEMV op itself (one row x [..., K] -> [..., N]); the reference elsewhere."""
    if not _kernel(x, "gemv"):
        return ref.gemv(x, weight, bias)
    return torch.ops.frspec_cuda.gemv(x, weight, bias)


def set_programmatic_launch(enabled: bool) -> bool:
    """Turn programmatic dependent launch (PDL) of our decoder / tree-attention kernels on or
    off for this process (default on; FRSPEC_PDL=0 starts with it off). Returns the previous
    setting; without the compiled kernels this is a no-op returning False. Graphs captured
    earlier keep the launches they were captured with."""
    if not _library.LOADED:
        return False
    return bool(torch.ops.frspec_cuda.set_programmatic_launch(enabled))


def set_gemv_l2_prefetch_bytes(budget: int) -> int:
    """How many bytes of its weight rows (all rows of one call together; default 0 = off, as
    it measured slower on an H200) each GEMV asks into L2 before waiting for the previous
    kernel. Returns the previous budget; without the compiled kernels a no-op returning 0."""
    if not _library.LOADED:
        return 0
    return int(torch.ops.frspec_cuda.set_gemv_l2_prefetch_bytes(budget))


@contextlib.contextmanager
def launch_settings(*, pdl: bool | None = None, l2_prefetch_bytes: int | None = None, gemv: bool | None = None):
    """Within the block: programmatic dependent launch on/off, the GEMV's L2-prefetch budget,
    and whether one-row products take our GEMV (`GEMV_ENABLED`); None leaves a setting as
    it is. The previous settings come back on exit. Benchmarks use it to compare variants;
    graphs captured inside keep the launches they were captured with."""
    global GEMV_ENABLED
    prev_pdl = set_programmatic_launch(pdl) if pdl is not None else None
    prev_l2 = set_gemv_l2_prefetch_bytes(l2_prefetch_bytes) if l2_prefetch_bytes is not None else None
    prev_gemv = GEMV_ENABLED
    if gemv is not None:
        GEMV_ENABLED = gemv
    try:
        yield
    finally:
        GEMV_ENABLED = prev_gemv
        if prev_l2 is not None:
            set_gemv_l2_prefetch_bytes(prev_l2)
        if prev_pdl is not None:
            set_programmatic_launch(prev_pdl)


if _library.LOADED:

    @torch.library.register_fake("frspec_cuda::gemv")
    def _gemv_fake(x, weight, bias=None):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake("frspec_cuda::rms_norm_gemv")
    def _rms_norm_gemv_fake(x, residual, norm_weight, eps, weight, bias, silu_and_mul):
        n = weight.shape[0] // 2 if silu_and_mul else weight.shape[0]
        return x.new_empty((*x.shape[:-1], n)), (x.new_empty(x.shape) if residual is not None else x.new_empty(0))

    @torch.library.register_fake("frspec_cuda::gemv_silu_and_mul")
    def _gemv_silu_and_mul_fake(x, gate_up_weight):
        return x.new_empty((*x.shape[:-1], gate_up_weight.shape[0] // 2))

    @torch.library.register_fake("frspec_cuda::rms_norm")
    def _rms_norm_fake(x, weight, eps):
        return torch.empty_like(x)

    @torch.library.register_fake("frspec_cuda::add_rms_norm")
    def _add_rms_norm_fake(x, residual, weight, eps):
        return torch.empty_like(x), torch.empty_like(x)

    @torch.library.register_fake("frspec_cuda::silu_and_mul")
    def _silu_and_mul_fake(gate_up):
        return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))

    @torch.library.register_fake("frspec_cuda::rope_qk_store_kv")
    def _rope_fake(qkv, positions, inv_freq, slots, k_cache, v_cache, num_heads):
        B, T = qkv.shape[:2]
        return qkv.new_empty((B, T, num_heads, k_cache.shape[-1]))
