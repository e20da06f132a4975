"""fr_lm_head_topk: reference semantics on CPU, the fused CUDA kernel against float64
logits on random shapes (odd sizes, n = 1, k = K, exact ties), and input checks."""

from __future__ import annotations

import pytest
import torch

import frspec_cuda
from frspec_cuda import reference
from conftest import poison_cuda_allocator, requires_kernel


def make_case(n, H, K, dtype, device, seed, vocab=None, distinct_rows=None):
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, H, generator=g, device=device).to(dtype)
    if distinct_rows:  # many exact duplicates: logits tie exactly
        base = torch.randn(distinct_rows, H, generator=g, device=device) * H**-0.5
        pick = torch.randint(0, distinct_rows, (K,), generator=g, device=device)
        weight = base[pick].to(dtype)
    else:
        weight = (torch.randn(K, H, generator=g, device=device) * H**-0.5).to(dtype)
    vocab = vocab or max(K, 1000)
    ids = torch.randperm(vocab, generator=g, device=device)[:K].to(torch.int32)
    return hidden, weight, ids


def test_reference_semantics_small_example():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    weight = torch.tensor([[1.0, 0.0], [3.0, 1.0], [1.0, 0.0], [0.0, -1.0]])
    ids = torch.tensor([40, 41, 42, 43], dtype=torch.int32)
    token_ids, logprobs = reference.fr_lm_head_topk(hidden, weight, ids, 3)
    # row 0 logits [1, 3, 1, 0]: 41, then the tie 40/42 in draft-index order
    assert token_ids[0].tolist() == [41, 40, 42]
    logits = torch.tensor([1.0, 3.0, 1.0, 0.0])
    torch.testing.assert_close(logprobs[0], torch.log_softmax(logits, 0)[[1, 0, 2]])
    assert token_ids[1].tolist() == [41, 40, 42]  # row 1 logits [0, 2, 0, -2]


@pytest.mark.parametrize("k", [1, 5, 64])
def test_reference_log_probs_are_normalised_over_the_subset(k):
    hidden, weight, ids = make_case(3, 16, 64, torch.float32, "cpu", seed=k)
    _, logprobs = reference.fr_lm_head_topk(hidden, weight, ids, 64)
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(3))
    token_ids, top = reference.fr_lm_head_topk(hidden, weight, ids, k)
    assert top.shape == (3, k) and bool((top[:, :-1] >= top[:, 1:]).all())


def _bad_cases(device):
    h, w, ids = make_case(2, 16, 40, torch.bfloat16, device, seed=0)
    return [
        ((h, w, ids, 0), "k must be in"),
        ((h, w, ids, 41), "k must be in"),
        ((h, w, ids, 65), "k must be in"),
        ((h[0], w, ids, 4), "hidden must be"),
        ((h, w, ids[:39], 4), "ids has 39 entries"),
        ((h, w[:, :8].contiguous(), ids, 4), "weight has hidden size 8"),
        ((h, w.half(), ids, 4), "dtype"),
        ((h, w, ids.float(), 4), "ids must be int32"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_reference_rejects_bad_inputs(case):
    args, fragment = _bad_cases("cpu")[case]
    with pytest.raises((ValueError, TypeError), match=fragment):
        frspec_cuda.fr_lm_head_topk(*args)


def test_vocab_size_check_catches_out_of_range_ids():
    h, w, ids = make_case(2, 16, 40, torch.float32, "cpu", seed=1)
    ids[3] = 5000
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=1000\)"):
        frspec_cuda.fr_lm_head_topk(h, w, ids, 4, vocab_size=1000)


# ----------------------------------------------------------------------------- GPU


def check_against_float64(hidden, weight, ids, k, token_ids, logprobs):
    """The kernel's top-k must be the true top-k up to fp32 rounding of the logits:
    every returned log-prob matches float64 at that token and at that rank, the list is
    sorted, ids are distinct, and ranks separated by more than the tolerance agree."""
    exact = torch.log_softmax(hidden.double() @ weight.double().T, dim=-1)
    vals, idx = torch.sort(exact, dim=-1, descending=True, stable=True)
    H = hidden.shape[1]
    tol = 1e-5 * (1 + H**0.5)  # fp32 accumulation of H bf16 products, logits of O(1)
    assert not logprobs.isnan().any() and bool((token_ids >= 0).all()), "poisoned outputs left"
    assert bool((logprobs[:, :-1] >= logprobs[:, 1:]).all()), "not sorted"
    for j in range(hidden.shape[0]):
        assert len(set(token_ids[j].tolist())) == k, "duplicate ids"
    pos = {int(t): i for i, t in enumerate(ids.tolist())}
    draft = torch.tensor([[pos[int(t)] for t in row] for row in token_ids.cpu()], device=exact.device)
    torch.testing.assert_close(logprobs.double(), exact.gather(1, draft), atol=tol, rtol=0)
    torch.testing.assert_close(logprobs.double(), vals[:, :k], atol=tol, rtol=0)
    # Where rank r is separated from its neighbours by more than the tolerance, the
    # token must be the reference's exactly.
    ref_ids = ids.long()[idx[:, :k]]
    big = torch.full_like(vals[:, :1], float("inf"))
    padded = torch.cat([big, vals[:, : k + 1], -big], 1)  # ranks -1 .. k (+ sentinel)
    above, here, below = padded[:, :k], padded[:, 1 : k + 1], padded[:, 2 : k + 2]
    clear = (above - here > 4 * tol) & (here - below > 4 * tol)
    assert torch.equal(token_ids[clear], ref_ids[clear])


SHAPES = [
    # n, H, K, k
    (1, 4096, 32768, 10),
    (1, 896, 1, 1),
    (3, 8, 7, 7),
    (1, 40, 127, 64),
    (5, 2048, 129, 33),
    (9, 3584, 1000, 32),
    (16, 5120, 3001, 64),
    (17, 8192, 300, 1),
    (33, 2048, 16384, 10),
    (64, 4096, 4099, 64),
    (60, 4096, 32768, 10),
    (2, 4096, 128256, 8),
    (2, 64, 20000, 64),  # > 2048 survivors: the merge falls back to whole lists
]


@requires_kernel("fr_lm_head_topk")
@pytest.mark.parametrize("n,H,K,k", SHAPES)
def test_kernel_matches_float64(n, H, K, k):
    dtype = torch.bfloat16 if (n + K) % 2 else torch.float16
    hidden, weight, ids = make_case(n, H, K, dtype, "cuda", seed=n * 7 + K)
    poison_cuda_allocator()
    token_ids, logprobs = frspec_cuda.fr_lm_head_topk(hidden, weight, ids, k)
    check_against_float64(hidden, weight, ids, k, token_ids, logprobs)


@requires_kernel("fr_lm_head_topk")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_exact_ties_go_to_lower_draft_index(dtype):
    hidden, weight, ids = make_case(6, 256, 2000, dtype, "cuda", seed=3, distinct_rows=5)
    token_ids, logprobs = frspec_cuda.fr_lm_head_topk(hidden, weight, ids, 64)
    ref_ids, ref_lp = reference.fr_lm_head_topk(hidden, weight, ids, 64)
    assert torch.equal(token_ids, ref_ids)
    torch.testing.assert_close(logprobs, ref_lp, atol=1e-5, rtol=0)


@requires_kernel("fr_lm_head_topk")
def test_kernel_more_than_64_rows_are_chunked():
    hidden, weight, ids = make_case(130, 512, 999, torch.bfloat16, "cuda", seed=5)
    token_ids, logprobs = frspec_cuda.fr_lm_head_topk(hidden, weight, ids, 16)
    assert token_ids.shape == (130, 16)
    check_against_float64(hidden, weight, ids, 16, token_ids, logprobs)


@requires_kernel("fr_lm_head_topk")
@pytest.mark.parametrize("case", range(8))
def test_kernel_rejects_bad_inputs(case):
    args, fragment = _bad_cases("cuda")[case]
    with pytest.raises(RuntimeError, match=fragment):
        torch.ops.frspec_cuda.fr_lm_head_topk(*args)


@requires_kernel("fr_lm_head_topk")
def test_kernel_rejects_layout_device_and_limits():
    h, w, ids = make_case(2, 64, 100, torch.bfloat16, "cuda", seed=2)
    op = torch.ops.frspec_cuda.fr_lm_head_topk
    with pytest.raises(RuntimeError, match="ids must be a CUDA tensor"):
        op(h, w, ids.cpu(), 4)
    with pytest.raises(RuntimeError, match="weight must be contiguous"):
        op(h, w.t().contiguous().t(), ids, 4)
    with pytest.raises(RuntimeError, match="hidden_size must be a multiple of 8"):
        op(h[:, :60].contiguous(), w[:, :60].contiguous(), ids, 4)
    with pytest.raises(RuntimeError, match="1..64 hidden rows"):
        op(torch.randn(65, 64, device="cuda", dtype=torch.bfloat16), w, ids, 4)
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        op(torch.randn(1, 65, device="cuda", dtype=torch.bfloat16).flatten()[1:].view(1, 64), w, ids, 4)
    with pytest.raises(RuntimeError, match="must be float16 or bfloat16"):
        op(h.float(), w.float(), ids, 4)


@requires_kernel("fr_lm_head_topk")
def test_kernel_under_torch_compile_and_cuda_graph():
    hidden, weight, ids = make_case(4, 1024, 5000, torch.bfloat16, "cuda", seed=9)
    expect = frspec_cuda.fr_lm_head_topk(hidden, weight, ids, 10)

    @torch.compile(fullgraph=True)
    def head(h):
        t, lp = frspec_cuda.fr_lm_head_topk(h, weight, ids, 10)
        return t, lp.exp()

    t, p = head(hidden)
    assert torch.equal(t, expect[0]) and torch.allclose(p, expect[1].exp())

    static = hidden.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        frspec_cuda.fr_lm_head_topk(static, weight, ids, 10)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_ids, out_lp = frspec_cuda.fr_lm_head_topk(static, weight, ids, 10)
    fresh = make_case(4, 1024, 5000, torch.bfloat16, "cuda", seed=10)[0]
    static.copy_(fresh)
    graph.replay()
    ref = frspec_cuda.fr_lm_head_topk(fresh, weight, ids, 10)
    assert torch.equal(out_ids, ref[0]) and torch.equal(out_lp, ref[1])
