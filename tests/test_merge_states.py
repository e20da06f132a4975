"""merge_attention_states: the reference against float64 attention, the CUDA kernel
against the reference, input checks, torch.compile and CUDA graphs."""

from __future__ import annotations

import math

import pytest
import torch

import frspec_cuda
from frspec_cuda import _library, reference
from conftest import HAS_CUDA, poison_cuda_allocator, requires_kernel

NEG_INF = float("-inf")


def partial_attention(q, k, v, keep):
    """Exact attention of q [T,H,D] over the keys where keep [T,H,S] is True, in the
    dtype of q: returns out [T,H,D] (0 where no key is kept) and lse [T,H] (-inf there)."""
    scale = 1 / math.sqrt(q.shape[-1])
    s = torch.einsum("thd,shd->ths", q, k) * scale
    s = s.masked_fill(~keep, NEG_INF)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)
    return torch.einsum("ths,shd->thd", p, v), lse


def random_split(tokens, heads, keys, g, p_empty=0.0):
    """A random partition of the keys into A and B per (token, head); with probability
    p_empty a row puts every key on one side, leaving the other side empty."""
    in_a = torch.rand(tokens, heads, keys, generator=g) < 0.5
    empty = torch.rand(tokens, heads, 1, generator=g) < p_empty
    all_a = torch.rand(tokens, heads, 1, generator=g) < 0.5
    in_a = torch.where(empty, all_a.expand_as(in_a), in_a)
    return in_a, ~in_a


@pytest.mark.parametrize("tokens,heads,dim,keys", [(1, 1, 8, 2), (7, 3, 64, 33), (33, 5, 128, 100)])
def test_reference_equals_float64_attention_over_union(tokens, heads, dim, keys):
    g = torch.Generator().manual_seed(tokens * 1000 + heads)
    q = torch.randn(tokens, heads, dim, dtype=torch.float64, generator=g) * 2
    k = torch.randn(keys, heads, dim, dtype=torch.float64, generator=g) * 2
    v = torch.randn(keys, heads, dim, dtype=torch.float64, generator=g)
    a, b = random_split(tokens, heads, keys, g, p_empty=0.3)
    out_a, lse_a = partial_attention(q, k, v, a)
    out_b, lse_b = partial_attention(q, k, v, b)
    full_out, full_lse = partial_attention(q, k, v, a | b)
    out, lse = reference.merge_attention_states(out_a, lse_a, out_b, lse_b)
    torch.testing.assert_close(out, full_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, full_lse, rtol=1e-12, atol=1e-12)


def test_reference_empty_sides_are_exact_and_nan_free():
    out_a = torch.randn(4, 2, 16, dtype=torch.bfloat16)
    out_b = torch.full_like(out_a, float("nan"))  # an empty partial may hold 0/0
    lse_a = torch.randn(4, 2)
    lse_b = torch.full_like(lse_a, NEG_INF)
    out, lse = reference.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert torch.equal(out, out_a) and torch.equal(lse, lse_a)
    out, lse = reference.merge_attention_states(out_b, lse_b, out_a, lse_a)
    assert torch.equal(out, out_a) and torch.equal(lse, lse_a)
    out, lse = reference.merge_attention_states(out_b, lse_b, out_b.clone(), lse_b.clone())
    assert torch.equal(out, torch.zeros_like(out)) and bool((lse == NEG_INF).all())


def test_reference_extreme_lse_gap_does_not_overflow():
    out_a, out_b = torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    lse_a = torch.tensor([[1e30], [-80.0]])
    lse_b = torch.tensor([[-1e30], [80.0]])
    out, lse = reference.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(out[0], out_a[0])
    torch.testing.assert_close(out[1], out_b[1])
    torch.testing.assert_close(lse, torch.tensor([[1e30], [80.0]]))


def _bad_inputs(device, dtype=torch.bfloat16):
    """(description, args, message fragment) for every kind of bad input."""
    o = torch.randn(5, 3, 64, device=device, dtype=dtype)
    l = torch.randn(5, 3, device=device)
    cases = [
        ("out rank", (o[0], l, o[0], l), "out_a must be [tokens, heads, head_dim]"),
        ("out shape mismatch", (o, l, o[:4], l), "out_b shape"),
        ("out dtype mismatch", (o, l, o.half() if dtype != torch.half else o.bfloat16(), l), "dtype"),
        ("lse dtype", (o, l.half(), o, l), "lse_a must be float32"),
        ("lse shape", (o, l[:4], o, l), "lse_a must be [tokens, heads]"),
        ("lse_b shape", (o, l, o, l.t().contiguous()), "lse_b must be [tokens, heads]"),
    ]
    return cases


@pytest.mark.parametrize("case", range(6))
def test_reference_rejects_bad_inputs(case):
    name, args, fragment = _bad_inputs("cpu")[case]
    with pytest.raises((ValueError, TypeError), match=fragment.replace("[", r"\[")):
        frspec_cuda.merge_attention_states(*args)


def test_cuda_tensor_without_kernel_gives_build_instructions(monkeypatch):
    monkeypatch.setattr(_library, "LOADED", False)
    monkeypatch.setattr(_library, "LOAD_ERROR", None)
    monkeypatch.setattr(_library, "CUDA_KERNELS", frozenset())
    with pytest.raises(RuntimeError, match="reference mode.*pip install"):
        _library.require_kernel("merge_attention_states")


# ----------------------------------------------------------------------------- GPU


def _gpu_case(tokens, heads, dim, dtype, seed, p_empty=0.1, misalign=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    n = tokens * heads * dim

    def out_tensor():
        flat = torch.randn(n + 1, generator=g, device="cuda", dtype=dtype)
        flat = flat[1:] if misalign else flat[:n]  # offset by one element: not 16-byte aligned
        return flat.view(tokens, heads, dim)

    out_a, out_b = out_tensor(), out_tensor()
    lse_a = torch.randn(tokens, heads, generator=g, device="cuda") * 6
    lse_b = torch.randn(tokens, heads, generator=g, device="cuda") * 6
    for lse in (lse_a, lse_b):
        lse.masked_fill_(torch.rand(tokens, heads, generator=g, device="cuda") < p_empty, NEG_INF)
    return out_a, lse_a, out_b, lse_b


def _assert_matches_reference(args):
    """Flash-attention rule: the kernel's error against float64 is at most twice the
    error of the same math in PyTorch at the output dtype (plus float32 rounding)."""
    poison_cuda_allocator()
    out, lse = frspec_cuda.merge_attention_states(*args)
    torch.cuda.synchronize()
    ref_out, ref_lse = reference.merge_attention_states(*args)
    exact_out, exact_lse = reference.merge_attention_states(
        args[0].double(), args[1].double(), args[2].double(), args[3].double()
    )
    assert out.dtype == args[0].dtype and lse.dtype == torch.float32
    assert not out.isnan().any(), "unwritten (poisoned) or NaN output elements"
    assert not lse.isnan().any(), "unwritten (poisoned) or NaN lse elements"
    err = (out.double() - exact_out).abs().max().item()
    ref_err = (ref_out.double() - exact_out).abs().max().item()
    assert err <= 2 * ref_err + 1e-6, (err, ref_err)
    both_empty = (args[1] == NEG_INF) & (args[3] == NEG_INF)
    assert bool((lse[both_empty] == NEG_INF).all())
    finite = ~both_empty
    torch.testing.assert_close(lse[finite], exact_lse[finite].float(), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(lse, ref_lse, rtol=2e-6, atol=2e-6)


@requires_kernel("merge_attention_states")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "tokens,heads,dim",
    [(1, 1, 64), (1, 32, 128), (7, 3, 128), (333, 5, 64), (60, 32, 128), (17, 8, 256),
     (5, 3, 80), (9, 7, 100), (3, 2, 1), (2049, 9, 72)],
)
def test_kernel_matches_reference(tokens, heads, dim, dtype):
    _assert_matches_reference(_gpu_case(tokens, heads, dim, dtype, seed=tokens + heads + dim))


@requires_kernel("merge_attention_states")
@pytest.mark.parametrize("dim", [64, 128])
def test_kernel_unaligned_inputs(dim):
    _assert_matches_reference(_gpu_case(37, 4, dim, torch.bfloat16, seed=dim, misalign=True))


@requires_kernel("merge_attention_states")
def test_kernel_empty_sides_are_exact():
    out_a, lse_a, out_b, lse_b = _gpu_case(64, 4, 128, torch.bfloat16, seed=3, p_empty=0.0)
    lse_b[::2] = NEG_INF
    out_b[::2] = float("nan")  # an empty side's out must not leak into the result
    lse_a[1::4] = NEG_INF
    lse_b[1::4] = NEG_INF
    out, lse = frspec_cuda.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert torch.equal(out[::2], out_a[::2]) and torch.equal(lse[::2], lse_a[::2])
    assert torch.equal(out[1::4], torch.zeros_like(out[1::4]))
    assert bool((lse[1::4] == NEG_INF).all())


@requires_kernel("merge_attention_states")
def test_kernel_zero_tokens():
    args = _gpu_case(0, 4, 128, torch.bfloat16, seed=0)
    out, lse = frspec_cuda.merge_attention_states(*args)
    assert out.shape == (0, 4, 128) and lse.shape == (0, 4)


@requires_kernel("merge_attention_states")
@pytest.mark.parametrize("case", range(6))
def test_kernel_rejects_bad_inputs(case):
    name, args, fragment = _bad_inputs("cuda")[case]
    with pytest.raises(RuntimeError, match=fragment.replace("[", r"\[")):
        torch.ops.frspec_cuda.merge_attention_states(*args)


@requires_kernel("merge_attention_states")
def test_kernel_rejects_wrong_device_dtype_and_layout():
    o = torch.randn(5, 3, 64, device="cuda", dtype=torch.bfloat16)
    l = torch.randn(5, 3, device="cuda")
    op = torch.ops.frspec_cuda.merge_attention_states
    with pytest.raises(RuntimeError, match="lse_a must be a CUDA tensor"):
        op(o, l.cpu(), o, l)
    with pytest.raises(RuntimeError, match="out_a must be float16 or bfloat16"):
        op(o.float(), l, o.float(), l)
    with pytest.raises(RuntimeError, match="out_b must be contiguous"):
        op(o, l, o.transpose(0, 1).contiguous().transpose(0, 1), l)
    with pytest.raises(RuntimeError, match="lse_b must be contiguous"):
        op(o, l, o, l.t().contiguous().t())
    if torch.cuda.device_count() > 1:
        with pytest.raises(RuntimeError, match="but the other inputs are on"):
            op(o, l, o.to("cuda:1"), l)


@requires_kernel("merge_attention_states")
def test_kernel_under_torch_compile():
    args = _gpu_case(60, 8, 128, torch.bfloat16, seed=11)

    @torch.compile(fullgraph=True)
    def merged_sum(out_a, lse_a, out_b, lse_b):
        out, lse = frspec_cuda.merge_attention_states(out_a * 2, lse_a, out_b, lse_b)
        return out.float().sum(-1), lse + 1

    got = merged_sum(*args)
    out, lse = frspec_cuda.merge_attention_states(args[0] * 2, *args[1:])
    torch.testing.assert_close(got[0], out.float().sum(-1))
    torch.testing.assert_close(got[1], lse + 1)


@requires_kernel("merge_attention_states")
def test_kernel_in_cuda_graph():
    static = _gpu_case(60, 8, 128, torch.bfloat16, seed=5)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        frspec_cuda.merge_attention_states(*static)  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = frspec_cuda.merge_attention_states(*static)
    for seed in (6, 7):
        fresh = _gpu_case(60, 8, 128, torch.bfloat16, seed=seed)
        for dst, src in zip(static, fresh):
            dst.copy_(src)
        graph.replay()
        ref = frspec_cuda.merge_attention_states(*fresh)
        assert torch.equal(out, ref[0]) and torch.equal(lse, ref[1])
