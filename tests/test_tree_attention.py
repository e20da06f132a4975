"""tree_attention: the reference against a dense float64 computation, the kernel against
float64 with the flash-attention rule (error <= 2x that of SDPA in the same dtype), split
merging, GQA, odd sizes, bad inputs, CUDA graphs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from frspec_cuda import tree
from frspec_cuda.reference import tree as ref
from conftest import poison_cuda_allocator, requires_kernel


def make_case(B, N, Hq, Hkv, D, cache_lens, dtype, device, seed, slack=5):
    g = torch.Generator().manual_seed(seed)
    L = max(cache_lens) + N + slack
    q = torch.randn(B, N, Hq, D, generator=g)
    k = torch.randn(B, L, Hkv, D, generator=g)
    v = torch.randn(B, L, Hkv, D, generator=g)
    parents = torch.full((B, N), -1, dtype=torch.int32)
    for i in range(1, N):
        parents[:, i] = torch.randint(0, i, (B,), generator=g, dtype=torch.int32)
    mask = ref.ancestor_mask(parents)
    cache_len = torch.tensor(cache_lens, dtype=torch.int32)
    t = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
    return t(q), t(k), t(v), cache_len.to(device), mask.to(device)


def dense_mask(cache_len, mask, N, L, T=None):
    """[B, 1, N, L] bool: prefix visible, tree part (T nodes, default N) from the packed
    mask, rest hidden."""
    B, T = mask.shape[0], N if T is None else T
    allowed = torch.zeros(B, 1, N, L, dtype=torch.bool, device=mask.device)
    tree_bits = ref.unpack_mask(mask, T)
    for b in range(B):
        c = int(cache_len[b])
        allowed[b, 0, :, :c] = True
        allowed[b, 0, :, c : c + T] = tree_bits[b]
    return allowed


def sdpa(q, k, v, cache_len, mask, scale, T=None):
    """The same attention through torch SDPA in q's dtype (GQA expanded), for the rule."""
    B, N, Hq, D = q.shape
    G = Hq // k.shape[2]
    am = dense_mask(cache_len, mask, N, k.shape[1], T)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(G, 2).transpose(1, 2),
                                         v.repeat_interleave(G, 2).transpose(1, 2), attn_mask=am, scale=scale)
    return out.transpose(1, 2)


def test_reference_matches_dense_float64():
    q, k, v, cl, mask = make_case(2, 9, 4, 2, 16, [5, 0], torch.float64, "cpu", seed=1)
    out, lse = ref.tree_attention(q, k, v, cl, mask, 0.25)
    am = dense_mask(cl, mask, 9, k.shape[1])[:, 0]  # [B, N, L]
    s = torch.einsum("bnhd,blhd->bhnl", q, k.repeat_interleave(2, 2)) * 0.25
    s = s.masked_fill(~am.unsqueeze(1), float("-inf"))
    expect = torch.einsum("bhnl,blhd->bnhd", torch.softmax(s, -1), v.repeat_interleave(2, 2))
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(lse, torch.logsumexp(s, -1).transpose(1, 2))


CASES = [
    # B, N, Hq, Hkv, D, cache_lens
    (1, 60, 32, 8, 128, [4096]),
    (1, 1, 8, 8, 64, [0]),
    (2, 7, 5, 1, 64, [1, 130]),
    (3, 60, 32, 8, 128, [100, 2000, 0]),
    (1, 130, 16, 4, 128, [777]),
    (2, 16, 4, 2, 64, [33, 5000]),
    (1, 256, 8, 2, 128, [63]),
    # one-node trees (decode steps): tree_decode_kernel for G <= 8 (impl mma; auto on Hopper takes
    # wgmma beyond 1K keys in all), the MMA kernel above
    (1, 1, 32, 8, 128, [4095]),
    (3, 1, 28, 4, 128, [0, 777, 5000]),
    (2, 1, 8, 1, 64, [63, 64]),
    (1, 1, 16, 1, 128, [300]),
    # odd head counts / row-tile edges for the wgmma kernel (128 packed rows per CTA)
    (2, 37, 12, 4, 128, [129, 3000]),  # G = 3, 111 rows: one tile, both consumers
    (1, 20, 6, 2, 128, [1000]),  # 60 rows: one consumer warpgroup sits out
    (2, 43, 24, 8, 128, [0, 1]),  # G = 3, 129 rows: a second tile with one row
    # B = 5: 80 row tiles leave SMs idle in one wave; auto takes several waves of more splits
    (5, 60, 32, 8, 128, [8192, 3000, 0, 8100, 4097]),
    # head_dim 64 through the wgmma kernel (Llama-3.2-1B's heads; cases 15-19)
    (1, 60, 32, 8, 64, [4096]),
    (3, 60, 32, 8, 64, [100, 2000, 0]),
    (2, 37, 12, 4, 64, [129, 3000]),  # G = 3: Q by cp.async, out from registers
    (1, 20, 6, 2, 64, [1000]),  # 60 rows: one consumer warpgroup
    (1, 60, 9, 3, 64, [700]),  # SmolLM2-135M's heads (the default model): G = 3, 180 rows, nodes across tiles
]


def test_reference_tree_len_is_the_last_rows_of_the_whole_tree():
    """tree_len = T > N: the N queries are the last N of T nodes (a drafting level whose
    earlier levels are cached): the same as those rows of the whole tree's attention."""
    for B, T, N, Hq, Hkv, D, lens in [(2, 11, 4, 4, 2, 64, [5, 0]), (1, 70, 6, 8, 2, 32, [33]),
                                       (1, 3, 1, 2, 1, 16, [2])]:
        q, k, v, cl, mask = make_case(B, T, Hq, Hkv, D, lens, torch.float64, "cpu", seed=T)
        full_out, full_lse = ref.tree_attention(q, k, v, cl, mask)
        out, lse = ref.tree_attention(q[:, T - N :], k, v, cl, mask[:, T - N :], tree_len=T)
        torch.testing.assert_close(out, full_out[:, T - N :], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse, full_lse[:, T - N :], rtol=1e-12, atol=1e-12)
        assert (mask[:, T - N :].shape[-1] == (T + 63) // 64) and not torch.equal(out, ref.tree_attention(
            q[:, T - N :], k, v, cl, mask[:, T - N :] & 1, tree_len=T)[0])  # the earlier nodes matter


TREE_LEN_CASES = [
    # B, T (tree nodes), N (queries: the last N of them), Hq, Hkv, D, cache_lens
    (1, 51, 10, 32, 8, 128, [4000]),  # an EAGLE-2 drafting level (topk 10, the fifth)
    (2, 70, 3, 8, 2, 128, [100, 1500]),  # two mask words
    (1, 5, 1, 32, 8, 128, [300]),  # one query below a chain: never the decode kernel
    (2, 9, 4, 4, 4, 64, [10, 0]),
]


@requires_kernel("tree_attention")
@pytest.mark.parametrize("case", range(len(TREE_LEN_CASES)))
@pytest.mark.parametrize("num_splits", [0, 3])
@pytest.mark.parametrize("impl", ["mma", "wgmma"])
def test_kernel_tree_len(case, num_splits, impl):
    B, T, N, Hq, Hkv, D, lens = TREE_LEN_CASES[case]
    if not wgmma_ok(D, impl):
        pytest.skip("the wgmma kernel needs compute capability 9.0 (and head_dim 128 for wgmma_serial)")
    q, k, v, cl, mask = make_case(B, T, Hq, Hkv, D, lens, torch.bfloat16, "cuda", seed=100 + case)
    q, mask = q[:, T - N :].contiguous(), mask[:, T - N :].contiguous()
    check_against_float64(q, k, v, cl, mask, lens, num_splits, impl, T)


def wgmma_ok(D, impl="wgmma"):
    """Whether `impl` runs at head_dim D here (always for mma): the wgmma kernel takes head_dim 64 and
    128 on compute capability 9.0, its serial schedule 128 only."""
    if not impl.startswith("wgmma"):
        return True
    return (D == 128 or impl == "wgmma") and torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@requires_kernel("tree_attention")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("num_splits", [0, 1, 3, 8, 13])
@pytest.mark.parametrize("impl", ["mma", "wgmma", "wgmma_serial"])
def test_kernel_flash_attention_rule(case, dtype, num_splits, impl):
    check_rule(case, dtype, num_splits, impl)


@requires_kernel("tree_attention")
@pytest.mark.parametrize("cluster", ["0", "1"])
@pytest.mark.parametrize("case", [0, 3, 7, 11, 13, 15, 18])
@pytest.mark.parametrize("num_splits", [2, 3, 8])
def test_kernel_split_merge_paths(case, num_splits, cluster, monkeypatch):
    """The wgmma kernel's splits merged by the merge kernel (FRSPEC_TREE_CLUSTER=0) or, forced
    whatever the cache length, in a thread-block cluster (=1; read per call)."""
    monkeypatch.setenv("FRSPEC_TREE_CLUSTER", cluster)
    check_rule(case, torch.bfloat16, num_splits, "wgmma")


@requires_kernel("tree_attention")
@pytest.mark.parametrize("q_tma", ["0", "1"])
@pytest.mark.parametrize("case", [0, 4, 6, 10, 12, 15, 17])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_kernel_q_copy_paths(case, num_splits, q_tma, monkeypatch):
    """The wgmma kernel's Q row tile by TMA (G | 128: G = 4, 16 here; the last row tile past
    N zero-filled by the TMA) or by cp.async (FRSPEC_TREE_Q_TMA=0, read per launch; the path
    every G that does not divide 128 takes, G = 3 in case 12)."""
    monkeypatch.setenv("FRSPEC_TREE_Q_TMA", q_tma)
    check_rule(case, torch.bfloat16, num_splits, "wgmma")


@requires_kernel("tree_attention")
@pytest.mark.parametrize("o_tma", ["0", "1"])
@pytest.mark.parametrize("case", [0, 3, 4, 6, 7, 10, 13, 14, 15, 16, 17, 18, 19])
def test_kernel_one_split_epilogue_paths(case, o_tma, monkeypatch):
    """The wgmma kernel's epilogue with one split: each consumer warpgroup's rows staged in
    shared memory and stored by TMA (G | 64: G = 4, 16 here, B = 3 and 5 in cases 3 and 14;
    nodes past N dropped by the TMA) or stored from registers (FRSPEC_TREE_O_TMA=0, read per
    launch; the path G = 3 takes, case 13, and every multi-split call's partials)."""
    monkeypatch.setenv("FRSPEC_TREE_O_TMA", o_tma)
    check_rule(case, torch.bfloat16, 1, "wgmma")


@requires_kernel("tree_attention")
@pytest.mark.parametrize("case", [0, 3, 7])
@pytest.mark.parametrize("impl", ["mma", "wgmma"])
def test_kernel_more_than_32_splits(case, impl):
    """40 splits (capped by the key tiles where fewer): the merge kernel's second weight per
    lane (splits 32..63) and its later load rounds."""
    check_rule(case, torch.bfloat16, 40, impl)


@requires_kernel("tree_attention")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("num_splits", [0, 1, 3, 8, 13])
def test_kernel_176_key_tiles(case, dtype, num_splits, monkeypatch):
    """The wgmma kernel with 176-key tiles (FRSPEC_TREE_KEYS, read per call)."""
    monkeypatch.setenv("FRSPEC_TREE_KEYS", "176")
    check_rule(case, dtype, num_splits, "wgmma")


@requires_kernel("tree_attention")
def test_split_rule():
    """One wave of CTAs where the row tiles fill the SMs; several waves of more splits where
    one wave would leave many idle (long caches, two consumer warpgroups per tile)."""
    if not wgmma_ok(128):
        pytest.skip("the multi-wave rule is the wgmma kernel's")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    splits = lambda B, N, L, **kw: tree.tree_attention_num_splits(B, N, 32, 8, 128, L, **kw)  # noqa: E731
    one_wave = lambda ctas: max(1, min(sms // ctas, 8))  # noqa: E731
    for B in (1, 2, 4):  # 16 B CTAs at N = 60
        if sms - 16 * B * one_wave(16 * B) <= sms // 10:  # one wave fills >= 90% of the SMs (132: all three)
            assert splits(B, 60, 32828) == one_wave(16 * B), B
    if sms - 80 * one_wave(80) >= sms // 4:  # B = 5, N = 60: 80 CTAs per split
        s = splits(5, 60, 32828)
        assert s > one_wave(80) and 80 * s > sms, s
        assert splits(5, 60, 32828, dtype=torch.float16) == s
    # 64 rows (one consumer, memory-bound): splits for about half the SMs; one-node trees
    # (4 rows) a full wave
    half = lambda ctas: max(1, min((sms // 2 + ctas // 2) // ctas, 8))  # noqa: E731
    for B in (1, 2, 3, 4, 5, 8):
        assert splits(B, 16, 16 + 32768) == half(8 * B), B
    assert splits(4, 1, 1 + 32768) == one_wave(32)
    for B in (2, 4, 8):  # head_dim 64: a full wave for one-consumer tiles too
        assert tree.tree_attention_num_splits(B, 16, 32, 8, 64, 16 + 4096) == one_wave(8 * B), B
    # short caches: about two 128-key tiles per split, within one wave
    assert splits(1, 60, 830) == min(one_wave(16), 4)  # 7 tiles
    assert splits(1, 16, 830) == min(one_wave(8), 4)
    assert splits(4, 60, 830) == min(one_wave(64), 4)
    assert splits(1, 60, 3000) == min(one_wave(16), 12)
    assert splits(1, 60, 4096, num_splits=5) == 5  # asked for: taken
    assert splits(1, 60, 4096, num_splits=100) == 32  # capped by the 128-key tiles
    with pytest.raises(RuntimeError, match="bad shape"):
        splits(1, 60, 30)


def check_rule(case, dtype, num_splits, impl):
    B, N, Hq, Hkv, D, lens = CASES[case]
    if not wgmma_ok(D, impl):
        pytest.skip("the wgmma kernel needs compute capability 9.0 (and head_dim 128 for wgmma_serial)")
    q, k, v, cl, mask = make_case(B, N, Hq, Hkv, D, lens, dtype, "cuda", seed=case * 10 + num_splits)
    check_against_float64(q, k, v, cl, mask, lens, num_splits, impl)


def check_against_float64(q, k, v, cl, mask, lens, num_splits, impl, tree_len=None):
    """The op on outputs poisoned with NaN vs float64 with the flash-attention rule; cache
    slots past each sequence's tree (tree_len nodes, default N) hold NaN: never read, or read
    and fully masked."""
    T = q.shape[1] if tree_len is None else tree_len
    scale = 1 / math.sqrt(q.shape[-1])
    k_clean, v_clean = k.clone(), v.clone()
    for b, c in enumerate(lens):
        k[b, c + T :] = float("nan")
        v[b, c + T :] = float("nan")
    if q.is_cuda:
        poison_cuda_allocator()
    out, lse = tree.tree_attention(q, k, v, cl, mask, scale, num_splits=num_splits, impl=impl, tree_len=tree_len)
    if q.is_cuda:
        torch.cuda.synchronize()
    exact_out, exact_lse = ref.tree_attention(q.double(), k_clean.double(), v_clean.double(), cl, mask, scale, T)
    base = sdpa(q, k_clean, v_clean, cl, mask, scale, T)
    assert not out.isnan().any() and not lse.isnan().any(), "unwritten or NaN outputs"
    err = (out.double() - exact_out).abs().max().item()
    base_err = (base.double() - exact_out).abs().max().item()
    assert err <= 2 * base_err + 1e-4, (err, base_err)
    torch.testing.assert_close(lse.double(), exact_lse.double(), atol=2e-3, rtol=0)


@requires_kernel("tree_attention")
def test_kernel_rejects_bad_inputs():
    q, k, v, cl, mask = make_case(2, 5, 4, 2, 64, [3, 4], torch.bfloat16, "cuda", seed=0)
    op = torch.ops.frspec_cuda.tree_attention
    with pytest.raises(RuntimeError, match="head_dim must be 64 or 128"):
        op(q[..., :32].contiguous(), k[..., :32].contiguous(), v[..., :32].contiguous(), cl, mask, 1.0, 0)
    with pytest.raises(RuntimeError, match=r"must be a multiple of kv_heads"):
        op(q[:, :, :3].contiguous(), k, v, cl, mask, 1.0, 0)
    with pytest.raises(RuntimeError, match="v_cache shape"):
        op(q, k, v[:, :-1].contiguous(), cl, mask, 1.0, 0)
    with pytest.raises(RuntimeError, match="k_cache dtype"):
        op(q, k.half(), v, cl, mask, 1.0, 0)
    with pytest.raises(RuntimeError, match="mask must have shape"):
        op(q, k, v, cl, mask[:, :4].contiguous(), 1.0, 0)
    with pytest.raises(RuntimeError, match="cache_len must be Int"):
        op(q, k, v, cl.long(), mask, 1.0, 0)
    with pytest.raises(RuntimeError, match="k_cache must be a CUDA tensor"):
        op(q, k.cpu(), v, cl, mask, 1.0, 0)
    with pytest.raises(ValueError, match="must fit max_len"):  # cache overflow, caught by the wrapper
        tree.tree_attention(q, k, v, cl + 100, mask)
    with pytest.raises(ValueError, match="11 tree nodes must fit max_len 14"):  # the tree, not the queries
        tree.tree_attention(q, k, v, cl, mask, tree_len=11)
    with pytest.raises(RuntimeError, match=r"tree_len \(3\) must be 0"):  # fewer nodes than queries
        op(q, k, v, cl, mask, 1.0, 0, 0, 3)
    with pytest.raises(RuntimeError, match="cannot hold the 70 tree nodes"):
        op(q, k, v, cl, mask, 1.0, 0, 0, 70)
    with pytest.raises(RuntimeError, match="impl must be"):
        op(q, k, v, cl, mask, 1.0, 0, 7)
    q_odd = torch.empty(q.numel() + 1, dtype=q.dtype, device=q.device)[1:].view(q.shape)  # contiguous, 2-byte offset
    q_odd.copy_(q)
    with pytest.raises(RuntimeError, match="q must start at a 16-byte aligned address"):
        op(q_odd, k, v, cl, mask, 1.0, 0)
    with pytest.raises(ValueError, match="impl must be one of"):
        tree.tree_attention(q, k, v, cl, mask, impl="fast")
    with pytest.raises(RuntimeError, match="not supported"):  # the serial schedule is head_dim 128 only
        tree.tree_attention(q, k, v, cl, mask, impl="wgmma_serial")


@requires_kernel("tree_attention")
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("impl", ["mma", "wgmma"])
def test_kernel_in_cuda_graph(impl, D):
    if not wgmma_ok(D, impl):
        pytest.skip("the wgmma kernel needs compute capability 9.0")
    q, k, v, cl, mask = make_case(2, 60, 32, 8, D, [500, 1500], torch.bfloat16, "cuda", seed=3)
    tree.tree_attention(q, k, v, cl, mask, impl=impl)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = tree.tree_attention(q, k, v, cl, mask, impl=impl, validate=False)
    q2 = torch.randn_like(q)
    q.copy_(q2)
    cl.copy_(torch.tensor([700, 10], dtype=torch.int32))
    graph.replay()
    expect = tree.tree_attention(q, k, v, cl, mask, impl=impl)
    assert torch.equal(out, expect[0]) and torch.equal(lse, expect[1])
