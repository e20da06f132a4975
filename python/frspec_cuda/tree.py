"""EAGLE-2 tree ops: build the dynamic draft tree, verify it (greedy or lossless sampling),
compact the accepted nodes' KV, attend over [KV cache + tree]. CUDA tensors run the
kernels (no host synchronisation, so a speculative step can be captured in a CUDA graph),
CPU tensors the references in `frspec_cuda.reference.tree`.

`validate=True` (the default) also checks tensor contents (parent indices) before a
launch, which costs one device sync; it is skipped while a CUDA graph is being captured.
The kernels themselves clamp malformed indices, so bad contents can give wrong trees but
never out-of-bounds memory accesses.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _library
from .reference import tree as ref


class Tree(NamedTuple):
    tokens: torch.Tensor         # [B, N] int64, node 0 = root
    parents: torch.Tensor        # [B, N] int32, -1 for the root, parent index < own index
    depth: torch.Tensor          # [B, N] int32
    positions: torch.Tensor      # [B, N] int64, cache_len + depth
    history_index: torch.Tensor  # [B, N] int32, the candidate each node came from (-1: root)
    mask: torch.Tensor           # [B, N, ceil(N/64)] int64, packed ancestor-or-self bits


class Verdict(NamedTuple):
    accept_len: torch.Tensor  # [B] int32, accepted nodes including the root
    accepted: torch.Tensor    # [B, N] int32, node indices root..deepest, -1 padded
    bonus: torch.Tensor       # [B] int64, the target's token after the accepted path


def _checking(validate: bool, t: torch.Tensor) -> bool:
    return validate and not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def build_dynamic_tree(hist_tokens, hist_parents, hist_scores, root_tokens, cache_len, num_nodes: int,
                       *, validate: bool = True) -> Tree:
    """Root + the num_nodes - 1 best candidates of the drafting history (see the reference)."""
    if not hist_tokens.is_cuda:
        return Tree(**ref.build_dynamic_tree(hist_tokens, hist_parents, hist_scores, root_tokens, cache_len, num_nodes))
    if _checking(validate, hist_parents):
        ref.check_history(hist_tokens, hist_parents, hist_scores, root_tokens, cache_len, num_nodes)
    _library.require_kernel("build_dynamic_tree")
    out = torch.ops.frspec_cuda.build_dynamic_tree(
        hist_tokens.long(), hist_parents.int(), hist_scores.float(), root_tokens.long(), cache_len.int(), num_nodes)
    return Tree(*out)


def verify_tree_greedy(tokens, parents, target_argmax, *, validate: bool = True) -> Verdict:
    """Accept the deepest path on which every token is the target's argmax at its parent."""
    if not tokens.is_cuda:
        return Verdict(*ref.verify_tree_greedy(tokens, parents, target_argmax))
    if _checking(validate, parents):
        ref.check_tree(tokens, parents)
    _library.require_kernel("verify_tree_greedy")
    return Verdict(*torch.ops.frspec_cuda.verify_tree_greedy(tokens.long(), parents.int(), target_argmax.long()))


def verify_tree_sampling(tokens, parents, probs, *, uniforms: torch.Tensor | None = None,
                         generator: torch.Generator | None = None, validate: bool = True) -> Verdict:
    """Lossless sampling verification (see the reference). probs [B, N, V] fp32: the
    target's distribution at every node after temperature / top-p / top-k. One uniform
    per tree level is drawn from `generator` (reproducible) unless `uniforms` is given."""
    B, N = tokens.shape
    if uniforms is None:
        # (0, 1]: u = 0 would accept a zero-probability child
        uniforms = 1.0 - torch.rand(B, N, generator=generator, device=tokens.device)
    if not tokens.is_cuda:
        return Verdict(*ref.verify_tree_sampling(tokens, parents, probs, uniforms))
    if _checking(validate, parents):
        ref.check_tree(tokens, parents)
    _library.require_kernel("verify_tree_sampling")
    return Verdict(*torch.ops.frspec_cuda.verify_tree_sampling(tokens.long(), parents.int(), probs.float(),
                                                               uniforms.float()))


TREE_ATTENTION_IMPLS = {"auto": 0, "mma": 1, "wgmma": 2, "wgmma_serial": 3}


def _impl_code(impl: str) -> int:
    if impl not in TREE_ATTENTION_IMPLS:
        raise ValueError(f"impl must be one of {sorted(TREE_ATTENTION_IMPLS)}, got {impl!r}")
    return TREE_ATTENTION_IMPLS[impl]


def tree_attention(q, k_cache, v_cache, cache_len, mask, scale: float | None = None, *, num_splits: int = 0,
                   impl: str = "auto", validate: bool = True, tree_len: int | None = None):
    """Attention of the N tree queries over the committed prefix and their ancestors.

    q [B, N, Hq, D]; k_cache, v_cache [B, L_max, Hkv, D] holding the prefix at
    [0, cache_len[b]) and the tree nodes' keys/values at cache_len[b] + node; mask from
    `build_dynamic_tree`. Returns out [B, N, Hq, D] and lse [B, N, Hq] fp32.
    `tree_len` (default N): the tree has this many nodes and q holds the last N of them,
    mask [B, N, ceil(tree_len / 64)] -- one drafting level, whose queries see the prefix,
    their ancestors among the earlier levels' nodes (already in the cache) and themselves. On CUDA: one
    kernel, split over the keys (num_splits 0 = its own rule, `tree_attention_num_splits`), the
    splits merged by a second kernel. impl: "auto", "mma" (mma.sync, any sm_80+ build) or "wgmma" (Hopper,
    warp-specialised TMA + wgmma, key tile j-1's P V issued behind tile j's Q K^T; head_dim 128 or 64
    on an sm_90a build; auto takes it for N > 1, and for one-node trees -- decode steps -- once
    B * max_len > 1024; below that a load-and-shuffle decode kernel), "wgmma_serial" (the same, each tile's P V
    after its softmax; head_dim 128; kept for measurement).
    """
    code = _impl_code(impl)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    T = q.shape[1] if tree_len is None else int(tree_len)
    if not q.is_cuda:
        return ref.tree_attention(q, k_cache, v_cache, cache_len, mask, scale, T)
    if _checking(validate, cache_len):
        if bool((cache_len < 0).any()) or int((cache_len + T).max()) > k_cache.shape[1]:
            raise ValueError(f"cache_len + {T} tree nodes must fit max_len {k_cache.shape[1]}, "
                             f"got cache_len {cache_len.tolist()}")
    _library.require_kernel("tree_attention")
    return torch.ops.frspec_cuda.tree_attention(q, k_cache, v_cache, cache_len, mask, scale, num_splits, code,
                                                0 if tree_len is None else T)


def tree_attention_num_splits(batch: int, nodes: int, q_heads: int, kv_heads: int, head_dim: int, max_len: int,
                              dtype: torch.dtype = torch.bfloat16, *, num_splits: int = 0,
                              impl: str = "auto") -> int:
    """How many key splits `tree_attention` takes on the current CUDA device for this shape
    (num_splits 0: its own rule -- up to 3072 keys about two key tiles per split; longer, one
    wave of CTAs, or several waves where one leaves SMs idle and a timing model says more
    splits finish sooner)."""
    code = _impl_code(impl)
    _library.require_kernel("tree_attention")
    return int(torch.ops.frspec_cuda.tree_attention_num_splits(batch, nodes, q_heads, kv_heads, head_dim, max_len,
                                                                dtype == torch.bfloat16, num_splits, code))


_counters: dict[torch.device, torch.Tensor] = {}


def compact_kv_cache(kv_cache: torch.Tensor, cache_len: torch.Tensor, accepted: torch.Tensor,
                     accept_len: torch.Tensor) -> None:
    """In place, all layers in one launch: move the accepted nodes' K/V (tree slots
    cache_len + accepted[b, i]) to cache_len + i and advance cache_len by accept_len.
    kv_cache: [layers, 2, B, L_max, H_kv, D]; cache_len int32 [B]. Call it once outside
    CUDA-graph capture first (it allocates a small counter per device)."""
    if not kv_cache.is_cuda:
        return ref.compact_kv_cache(kv_cache, cache_len, accepted, accept_len)
    _library.require_kernel("compact_kv_cache")
    counter = _counters.get(kv_cache.device)
    if counter is None:
        counter = _counters[kv_cache.device] = torch.zeros(1, dtype=torch.int32, device=kv_cache.device)
    torch.ops.frspec_cuda.compact_kv_cache(kv_cache, cache_len, accepted, accept_len, counter)


if _library.LOADED:

    @torch.library.register_fake("frspec_cuda::build_dynamic_tree")
    def _build_fake(hist_tokens, hist_parents, hist_scores, root_tokens, cache_len, num_nodes):
        B, N, W = hist_tokens.shape[0], num_nodes, ref.mask_words(num_nodes)
        i64, i32 = dict(dtype=torch.int64), dict(dtype=torch.int32)
        e = hist_tokens.new_empty
        return e((B, N), **i64), e((B, N), **i32), e((B, N), **i32), e((B, N), **i64), e((B, N), **i32), e((B, N, W), **i64)

    def _verdict_fake(tokens, parents, *rest):
        B, N = tokens.shape
        e = tokens.new_empty
        return e((B,), dtype=torch.int32), e((B, N), dtype=torch.int32), e((B,), dtype=torch.int64)

    torch.library.register_fake("frspec_cuda::verify_tree_greedy")(_verdict_fake)
    torch.library.register_fake("frspec_cuda::verify_tree_sampling")(_verdict_fake)

    @torch.library.register_fake("frspec_cuda::tree_attention")
    def _tree_attention_fake(q, k_cache, v_cache, cache_len, mask, scale, num_splits=0, impl=0, tree_len=0):
        return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)

    @torch.library.register_fake("frspec_cuda::compact_kv_cache")
    def _compact_fake(kv_cache, cache_len, accepted, accept_len, counter):
        return None
