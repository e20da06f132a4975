"""APB attention: the reference's layout (anchor / passing / local) and its plain-causal
special case; the kernel against float64 with the flash-attention rule on odd lengths,
GQA, both dtypes and head dims; tile skipping; bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from frspec_cuda import apb
from frspec_cuda.reference.apb import apb_attention, apb_mask
from conftest import poison_cuda_allocator, requires_kernel


def test_mask_layout_by_hand():
    # anchor 2, local 3, passing 2: keys [p0 p1 | a0 a1 | l0 l1 l2]
    m = apb_mask(2, 3, 2).int().tolist()
    assert m == [
        [0, 0, 1, 0, 0, 0, 0],  # a0: causal within the anchor
        [0, 0, 1, 1, 0, 0, 0],  # a1
        [1, 1, 1, 1, 1, 0, 0],  # l0: all passing + anchor, causal local
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
    ]


def test_no_anchor_no_passing_is_causal_attention():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(37, 8, 16, generator=g, dtype=torch.float64)
    k = torch.randn(37, 2, 16, generator=g, dtype=torch.float64)
    v = torch.randn(37, 2, 16, generator=g, dtype=torch.float64)
    out, lse = apb_attention(q, k, v, anchor_len=0, passing_len=0)
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.repeat_interleave(4, 1).transpose(0, 1),
                                         v.repeat_interleave(4, 1).transpose(0, 1), is_causal=True).transpose(0, 1)
    torch.testing.assert_close(out, ref)
    assert lse.shape == (37, 8)


def test_local_rows_equal_attention_over_their_visible_keys():
    g = torch.Generator().manual_seed(1)
    A, Lc, P = 3, 5, 4
    q = torch.randn(A + Lc, 2, 8, generator=g, dtype=torch.float64)
    k = torch.randn(P + A + Lc, 1, 8, generator=g, dtype=torch.float64)
    v = torch.randn(P + A + Lc, 1, 8, generator=g, dtype=torch.float64)
    out, lse = apb_attention(q, k, v, anchor_len=A, passing_len=P, scale=0.3)
    i = A + 2  # third local row sees passing + anchor + local[:3]
    keys = list(range(P + A + 3))
    s = (q[i] @ k[keys, 0].T) * 0.3  # [2 heads, keys]
    torch.testing.assert_close(out[i], torch.softmax(s, -1) @ v[keys, 0])
    torch.testing.assert_close(lse[i], torch.logsumexp(s, -1))


@pytest.mark.parametrize("anchor,passing,tk,msg", [(9, 0, 8, "fewer than anchor_len"), (2, 3, 9, "must have passing_len"),
                                                   (-1, 0, 8, ">= 0")])
def test_bad_configurations(anchor, passing, tk, msg):
    q = torch.randn(8, 2, 8)
    k = torch.randn(tk, 1, 8)
    with pytest.raises(ValueError, match=msg):
        apb_attention(q, k, k, anchor, passing)


# ------------------------------------------------------------------------------ kernel

KERNEL_CASES = [
    # anchor, local, passing, Hq, Hkv, D
    (0, 1, 0, 1, 1, 64),          # one query, host 0
    (0, 37, 0, 4, 2, 128),        # plain causal, odd length
    (5, 200, 77, 8, 2, 128),      # all three segments, nothing tile-aligned
    (128, 384, 256, 32, 8, 128),  # tile-aligned, Llama-3 heads
    (300, 70, 513, 4, 1, 64),     # anchor longer than local; MQA
    (3, 129, 0, 2, 2, 64),        # anchor, no passing
    (0, 130, 64, 6, 3, 128),      # passing, no anchor
    (130, 0, 9, 4, 2, 64),        # anchor rows only
    (1000, 1100, 1700, 8, 2, 128),
]


def _case(A, L, P, Hq, Hkv, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(A + L, Hq, D, generator=g)
    k = torch.randn(P + A + L, Hkv, D, generator=g)
    v = torch.randn(P + A + L, Hkv, D, generator=g)
    return [t.to("cuda", dtype) for t in (q, k, v)]


def _sdpa_same_dtype(q, k, v, A, P, scale):
    """The same attention through SDPA in q's dtype with a dense mask (for the rule)."""
    G = q.shape[1] // k.shape[1]
    mask = apb_mask(A, q.shape[0] - A, P, q.device)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.repeat_interleave(G, 1).transpose(0, 1),
                                         v.repeat_interleave(G, 1).transpose(0, 1), attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


@requires_kernel("apb_attention")
def _needs_wgmma(impl, D=128):
    if impl.startswith("wgmma") and (D != 128 or torch.cuda.get_device_capability() != (9, 0)):
        pytest.skip("the wgmma kernels need head_dim 128 on a compute capability 9.0 GPU")


@requires_kernel("apb_attention")
# auto: the ping-pong wgmma kernel on H100 for D 128, mma.sync otherwise
@pytest.mark.parametrize("impl", ["mma", "wgmma", "wgmma_ws", "wgmma_pingpong", "wgmma_pingpong_windows", "wgmma_pingpong_overlap", "auto"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", range(len(KERNEL_CASES)))
def test_kernel_flash_attention_rule(case, dtype, impl):
    A, L, P, Hq, Hkv, D = KERNEL_CASES[case]
    _needs_wgmma(impl, D)
    q, k, v = _case(A, L, P, Hq, Hkv, D, dtype, seed=case)
    scale = 1 / math.sqrt(D) if case % 2 else 0.3
    poison_cuda_allocator()
    out, lse = apb.apb_attention(q, k, v, A, P, scale, impl=impl)
    torch.cuda.synchronize()
    exact_out, exact_lse = apb_attention(q.double(), k.double(), v.double(), A, P, scale)
    assert not out.isnan().any() and not lse.isnan().any(), "unwritten or NaN outputs"
    err = (out.double() - exact_out).abs().max().item()
    base_err = (_sdpa_same_dtype(q, k, v, A, P, scale).double() - exact_out).abs().max().item()
    assert err <= 2 * base_err + 1e-4, (err, base_err)
    torch.testing.assert_close(lse.double(), exact_lse, atol=2e-3, rtol=0)


@requires_kernel("apb_attention")
@pytest.mark.parametrize("impl", ["wgmma", "wgmma_ws", "wgmma_pingpong", "wgmma_pingpong_windows", "wgmma_pingpong_overlap", "auto"])
def test_wgmma_and_mma_kernels_agree(impl):
    _needs_wgmma(impl)
    q, k, v = _case(4096, 1000, 3000, 32, 8, 128, torch.bfloat16, seed=11)
    a_out, a_lse = apb.apb_attention(q, k, v, 4096, 3000, impl=impl)
    b_out, b_lse = apb.apb_attention(q, k, v, 4096, 3000, impl="mma")
    torch.testing.assert_close(a_out, b_out, atol=1.6e-2, rtol=0)
    torch.testing.assert_close(a_lse, b_lse, atol=1e-3, rtol=0)
    if impl != "auto":  # no wgmma kernel for head_dim 64 ("auto" falls back to mma.sync there)
        with pytest.raises(RuntimeError, match="apb_attention"):
            apb.apb_attention(q[..., :64].contiguous(), k[..., :64].contiguous(), v[..., :64].contiguous(), 4096,
                              3000, impl=impl)


@requires_kernel("apb_attention")
@pytest.mark.parametrize("impl", ["mma", "wgmma", "wgmma_ws", "wgmma_pingpong", "wgmma_pingpong_windows", "wgmma_pingpong_overlap", "auto"])
def test_kernel_never_reads_hidden_keys(impl):
    _needs_wgmma(impl)
    """Keys the layout hides (passing for anchor rows, the causal future) are made NaN: a
    kernel that loads or multiplies them without masking would produce NaN."""
    A, L, P = 200, 300, 150
    q, k, v = _case(A, L, P, 8, 2, 128, torch.bfloat16, seed=7)
    out_clean, _ = apb.apb_attention(q, k, v, A, P, impl=impl)
    # An anchor-only query block (rows < 128 < A) can see keys [P, P + 128) only: poison the
    # rest for a copy restricted to the first 128 query rows.
    qa = q[:128].contiguous()
    k2, v2 = k[: P + 128].clone(), v[: P + 128].clone()
    k2[:P] = float("nan")
    v2[:P] = float("nan")
    out, lse = apb.apb_attention(qa, k2, v2, anchor_len=128, passing_len=P, impl=impl)
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out, out_clean[:128], atol=0, rtol=0)


@requires_kernel("apb_attention")
def test_kernel_rejects_bad_inputs():
    q, k, v = _case(4, 20, 6, 4, 2, 64, torch.bfloat16, seed=0)
    op = torch.ops.frspec_cuda.apb_attention
    with pytest.raises(RuntimeError, match="must have passing_len"):
        op(q, k, v, 4, 5, 1.0)
    with pytest.raises(RuntimeError, match="fewer than anchor_len"):
        op(q, k[: 6 + 25], v[: 6 + 25], 25, 6, 1.0)
    with pytest.raises(RuntimeError, match="head_dim must be 64 or 128"):
        op(q[..., :32].contiguous(), k[..., :32].contiguous(), v[..., :32].contiguous(), 4, 6, 1.0)
    with pytest.raises(RuntimeError, match="multiple of kv_heads"):
        op(q[:, :3].contiguous(), k, v, 4, 6, 1.0)
    with pytest.raises(RuntimeError, match="k dtype"):
        op(q, k.half(), v, 4, 6, 1.0)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        op(q, k.transpose(0, 1).contiguous().transpose(0, 1), v, 4, 6, 1.0)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        op(q, k.cpu(), v, 4, 6, 1.0)
    with pytest.raises(RuntimeError, match=">= 0"):
        op(q, k, v, -1, 6, 1.0)
    with pytest.raises(RuntimeError, match="v shape"):
        op(q, k, v[:-1].contiguous(), 4, 6, 1.0)
    with pytest.raises(RuntimeError, match="float16 or bfloat16|Half or BFloat16|dtype"):
        op(q.float(), k.float(), v.float(), 4, 6, 1.0)


@requires_kernel("apb_attention")
def test_kernel_under_torch_compile_and_graph():
    q, k, v = _case(64, 200, 40, 8, 2, 128, torch.bfloat16, seed=3)
    f = torch.compile(lambda q, k, v: apb.apb_attention(q, k, v, 64, 40), fullgraph=True)
    out, lse = f(q, k, v)
    ref_out, ref_lse = apb.apb_attention(q, k, v, 64, 40)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_lse = apb.apb_attention(q, k, v, 64, 40)
    q.copy_(torch.randn_like(q))
    graph.replay()
    e_out, e_lse = apb.apb_attention(q, k, v, 64, 40)
    assert torch.equal(g_out, e_out) and torch.equal(g_lse, e_lse)


def test_attention_flops_counts_visible_pairs():
    A, L, P, H, D = 3, 5, 4, 2, 8
    pairs = int(apb_mask(A, L, P).sum())
    assert apb.attention_flops(A, L, P, D, H) == 4 * D * H * pairs


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_lse_matches_reference(causal):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 4, 16, generator=g, dtype=torch.float64)
    k = torch.randn(11, 2, 16, generator=g, dtype=torch.float64)
    v = torch.randn(11, 2, 16, generator=g, dtype=torch.float64)
    out, lse = apb.attention_with_lse(q, k, v, causal_offset=8 if causal else None)
    if causal:  # offset 8, 3 queries over 11 keys: the APB layout with passing 8, no anchor
        ref_out, ref_lse = apb_attention(q, k, v, 0, 8)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(lse, ref_lse)
    else:
        s = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(2, 1)) * 0.25
        torch.testing.assert_close(out, torch.einsum("hqk,khd->qhd", s.softmax(-1), v.repeat_interleave(2, 1)))
        torch.testing.assert_close(lse, torch.logsumexp(s, -1).T)


@requires_kernel("apb_attention")
@pytest.mark.parametrize("T,causal", [(1, False), (1, True), (5, True), (5, False)])
def test_attention_with_lse_on_gpu(T, causal):
    """The decode-phase attention: one query on the split-K kernel, T causal rows on the
    APB kernel, the rest in PyTorch; all against float64."""
    g = torch.Generator().manual_seed(T)
    Tk = 3000
    q = torch.randn(T, 32, 128, generator=g).to("cuda", torch.bfloat16)
    k = torch.randn(Tk, 8, 128, generator=g).to("cuda", torch.bfloat16)
    v = torch.randn(Tk, 8, 128, generator=g).to("cuda", torch.bfloat16)
    off = Tk - T if causal else None
    out, lse = apb.attention_with_lse(q, k, v, causal_offset=off)
    exact_out, exact_lse = apb.attention_with_lse(q.double(), k.double(), v.double(), causal_offset=off)
    bf16_err = (exact_out.to(torch.bfloat16).double() - exact_out).abs().max().item()
    assert (out.double() - exact_out).abs().max().item() <= 2 * bf16_err + 1e-3
    torch.testing.assert_close(lse.double(), exact_lse, atol=2e-3, rtol=0)
