"""Fused decoder-layer ops (rms_norm, add_rms_norm, silu_and_mul, rope_qk_store_kv): the
references against Hugging Face transformers' Llama pieces, the kernels against float64
with the flash-attention rule (error <= 2x eager PyTorch's in the same dtype), input
checks, torch.compile and CUDA graphs."""

from __future__ import annotations

import pytest
import torch

from frspec_cuda import decoder
from frspec_cuda.reference import decoder as ref
from conftest import poison_cuda_allocator, requires_kernel

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama  # noqa: E402

DTYPES = [torch.bfloat16, torch.float16]


def _close_to_rule(got: torch.Tensor, eager: torch.Tensor, exact: torch.Tensor, what: str):
    """got (kernel) vs exact (float64): error <= 2x eager's error in the same dtype."""
    err = (got.double() - exact).abs().max().item()
    base = (eager.double() - exact).abs().max().item()
    assert err <= 2 * base + 1e-6, f"{what}: kernel error {err:.3g} > 2 x eager error {base:.3g}"


# ----------------------------------------------------------------------- references (CPU)

def test_reference_rms_norm_equals_hf():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 96, generator=g) * 3
    hf = modeling_llama.LlamaRMSNorm(96, eps=1e-6)
    with torch.no_grad():
        hf.weight.copy_(1 + 0.1 * torch.randn(96, generator=g))
        torch.testing.assert_close(ref.rms_norm(x, hf.weight, 1e-6), hf(x), rtol=0, atol=0)
        d = torch.randn(3, 7, 96, generator=g)
        normed, s = ref.add_rms_norm(d, x, hf.weight, 1e-6)
        torch.testing.assert_close(s, x + d, rtol=0, atol=0)
        torch.testing.assert_close(normed, hf(x + d), rtol=0, atol=0)


def test_reference_silu_and_mul_equals_hf_mlp():
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48)
    mlp = modeling_llama.LlamaMLP(cfg)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gate_up = torch.cat([mlp.gate_proj(x), mlp.up_proj(x)], dim=-1)
        torch.testing.assert_close(mlp.down_proj(ref.silu_and_mul(gate_up)), mlp(x), rtol=1e-6, atol=1e-6)


def test_reference_rope_qk_store_kv_equals_hf_rotary():
    B, T, Hq, Hkv, D, L = 2, 5, 6, 2, 16, 12
    cfg = transformers.LlamaConfig(hidden_size=Hq * D, num_attention_heads=Hq, num_key_value_heads=Hkv,
                                   head_dim=D, rope_theta=10000.0)
    rotary = modeling_llama.LlamaRotaryEmbedding(config=cfg)
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(B, T, (Hq + 2 * Hkv) * D, generator=g)
    positions = torch.randint(0, 50, (B, T), generator=g)
    slots = torch.tensor([[0, 3, 11, 12, -1], [5, 6, 7, 8, 9]])  # 12 and -1 lie outside the cache
    k_cache, v_cache = torch.full((2, B, L, Hkv, D), 7.0).unbind(0)
    inv_freq = rotary.inv_freq.float()
    q = ref.rope_qk_store_kv(qkv, positions, inv_freq, slots, k_cache, v_cache, Hq)
    heads = qkv.view(B, T, Hq + 2 * Hkv, D)
    cos, sin = rotary(qkv, positions)
    q_hf, k_hf = modeling_llama.apply_rotary_pos_emb(heads[:, :, :Hq].transpose(1, 2),
                                                     heads[:, :, Hq:Hq + Hkv].transpose(1, 2), cos, sin)
    torch.testing.assert_close(q, q_hf.transpose(1, 2), rtol=1e-6, atol=1e-6)
    k_hf = k_hf.transpose(1, 2)
    for b in range(B):
        for t in range(T):
            s = int(slots[b, t])
            if 0 <= s < L:
                torch.testing.assert_close(k_cache[b, s], k_hf[b, t], rtol=1e-6, atol=1e-6)
                assert torch.equal(v_cache[b, s], heads[b, t, Hq + Hkv:])
    written = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        for s in slots[b].tolist():
            if 0 <= s < L:
                written[b, s] = True
    assert bool((k_cache[~written] == 7).all()) and bool((v_cache[~written] == 7).all())


# ---------------------------------------------------------------------------- kernels (GPU)

@requires_kernel("rms_norm")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,H", [(1, 4096), (3, 8), (17, 4095), (64, 1000), (5, 14336), (2, 12288)])
def test_rms_norm_kernels_follow_the_rule(rows, H, dtype):
    g = torch.Generator(device="cuda").manual_seed(rows * 7 + H)
    x = (torch.randn(rows, H, device="cuda", generator=g) * 2).to(dtype)
    d = torch.randn(rows, H, device="cuda", generator=g).to(dtype)
    w = (1 + 0.2 * torch.randn(H, device="cuda", generator=g)).to(dtype)
    eps = 1e-5
    poison_cuda_allocator()
    got = decoder.rms_norm(x, w, eps)
    exact = ref.rms_norm(x.double(), w.double(), eps)
    _close_to_rule(got, ref.rms_norm(x, w, eps), exact, f"rms_norm {rows}x{H} {dtype}")
    poison_cuda_allocator()
    normed, s = decoder.add_rms_norm(d, x, w, eps)
    assert torch.equal(s, d + x)  # one rounding of the sum, as eager
    exact = ref.rms_norm(s.double(), w.double(), eps)
    _close_to_rule(normed, ref.rms_norm(s, w, eps), exact, f"add_rms_norm {rows}x{H} {dtype}")


@requires_kernel("rms_norm")
def test_rms_norm_unaligned_rows_take_the_scalar_path():
    base = torch.randn(3 * 100 + 1, device="cuda", dtype=torch.bfloat16)
    x = base[1:].view(3, 100)  # 2-byte offset: no 16-byte vectors
    w = torch.randn(100, device="cuda", dtype=torch.bfloat16)
    _close_to_rule(decoder.rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6), ref.rms_norm(x.double(), w.double(), 1e-6),
                   "unaligned rms_norm")


@requires_kernel("silu_and_mul")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,I", [(1, 14336), (7, 13), (60, 1024), (3, 8)])
def test_silu_and_mul_kernel_follows_the_rule(rows, I, dtype):
    g = torch.Generator(device="cuda").manual_seed(rows + I)
    gate_up = (torch.randn(rows, 2 * I, device="cuda", generator=g) * 3).to(dtype)
    poison_cuda_allocator()
    got = decoder.silu_and_mul(gate_up)
    assert got.shape == (rows, I)
    _close_to_rule(got, ref.silu_and_mul(gate_up), ref.silu_and_mul(gate_up.double()), f"silu_and_mul {rows}x{I}")


@requires_kernel("rope_qk_store_kv")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,Hq,Hkv,D", [(1, 1, 32, 8, 128), (2, 7, 5, 1, 64), (3, 33, 4, 4, 6), (1, 60, 28, 4, 128)])
def test_rope_qk_store_kv_kernel_follows_the_rule(B, T, Hq, Hkv, D, dtype):
    g = torch.Generator(device="cuda").manual_seed(B * 100 + T)
    L = T + 20
    qkv = (torch.randn(B, T, (Hq + 2 * Hkv) * D, device="cuda", generator=g) * 2).to(dtype)
    positions = torch.randint(0, 100000, (B, T), device="cuda", generator=g)
    slots = torch.stack([torch.randperm(L, device="cuda", generator=g)[:T] for _ in range(B)])
    slots[0, 0] = L  # outside the cache: not written
    if T > 1:
        slots[-1, -1] = -3
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device="cuda", dtype=torch.float64) / D)).float()
    k_ref, v_ref = (torch.randn(2, B, L, Hkv, D, device="cuda", generator=g).to(dtype)).unbind(0)
    k_got, v_got = k_ref.clone(), v_ref.clone()
    k64, v64 = k_ref.double(), v_ref.double()
    poison_cuda_allocator()
    q = decoder.rope_qk_store_kv(qkv, positions, inv_freq, slots, k_got, v_got, Hq)
    q_eager = ref.rope_qk_store_kv(qkv, positions, inv_freq, slots, k_ref, v_ref, Hq)
    q64 = ref.rope_qk_store_kv(qkv.double(), positions, inv_freq.double(), slots, k64, v64, Hq)
    _close_to_rule(q, q_eager, q64, "q")
    _close_to_rule(k_got, k_ref, k64, "k cache")
    assert torch.equal(v_got, v_ref)  # copied, untouched elsewhere


@requires_kernel("rope_qk_store_kv")
def test_decoder_ops_reject_bad_inputs():
    dev = "cuda"
    x = torch.randn(4, 64, device=dev, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="weight must be"):
        decoder.rms_norm(x, torch.ones(63, device=dev, dtype=torch.bfloat16), 1e-5)
    with pytest.raises(RuntimeError, match="weight dtype"):
        decoder.rms_norm(x, torch.ones(64, device=dev, dtype=torch.float16), 1e-5)
    with pytest.raises(RuntimeError, match="residual shape"):
        decoder.add_rms_norm(x, x[:2], torch.ones(64, device=dev, dtype=torch.bfloat16), 1e-5)
    with pytest.raises(RuntimeError, match="contiguous"):
        decoder.rms_norm(x.t(), torch.ones(4, device=dev, dtype=torch.bfloat16), 1e-5)
    with pytest.raises(RuntimeError, match="2 \\* intermediate"):
        decoder.silu_and_mul(torch.randn(3, 5, device=dev, dtype=torch.bfloat16))
    k = torch.zeros(1, 8, 2, 16, device=dev, dtype=torch.bfloat16)
    qkv = torch.randn(1, 3, (4 + 4) * 16, device=dev, dtype=torch.bfloat16)
    pos = torch.zeros(1, 3, dtype=torch.long, device=dev)
    inv = torch.ones(8, device=dev)
    with pytest.raises(RuntimeError, match="multiple of the cache's kv_heads"):
        decoder.rope_qk_store_kv(qkv, pos, inv, pos, k, k.clone(), 3)
    with pytest.raises(RuntimeError, match="qkv must be"):
        decoder.rope_qk_store_kv(qkv, pos, inv, pos, k, k.clone(), 2)
    with pytest.raises(RuntimeError, match="positions must be int64"):
        decoder.rope_qk_store_kv(qkv, pos.int(), inv, pos, k, k.clone(), 4)
    with pytest.raises(RuntimeError, match="slots must be"):
        decoder.rope_qk_store_kv(qkv, pos, inv, pos[:, :2], k, k.clone(), 4)
    with pytest.raises(RuntimeError, match="inv_freq must be"):
        decoder.rope_qk_store_kv(qkv, pos, inv[:4], pos, k, k.clone(), 4)
    with pytest.raises(RuntimeError, match="v_cache shape"):
        decoder.rope_qk_store_kv(qkv, pos, inv, pos, k, k[:, :4].clone(), 4)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        torch.ops.frspec_cuda.rope_qk_store_kv(qkv, pos.cpu(), inv, pos, k, k.clone(), 4)


@requires_kernel("rope_qk_store_kv")
def test_decoder_ops_compile_and_replay_in_a_cuda_graph():
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(2, 256, device=dev, dtype=dt)
    w = torch.randn(256, device=dev, dtype=dt)
    qkv = torch.randn(1, 2, 12 * 64, device=dev, dtype=dt)
    pos = torch.tensor([[3, 4]], device=dev)
    inv = torch.rand(32, device=dev)
    k, v = torch.zeros(2, 1, 8, 2, 64, device=dev, dtype=dt).unbind(0)

    def body(x, qkv):
        h, s = decoder.add_rms_norm(x, x, w, 1e-5)
        q = decoder.rope_qk_store_kv(qkv, pos, inv, pos, k, v, 8)
        return decoder.silu_and_mul(decoder.rms_norm(h, w, 1e-5)), s, q

    eager = body(x, qkv)
    compiled = torch.compile(body, fullgraph=True)(x, qkv)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        static = body(x, qkv)
    x.copy_(torch.randn_like(x))
    qkv.copy_(torch.randn_like(qkv))
    graph.replay()
    for a, b in zip(static, body(x, qkv)):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- GEMV

def test_reference_gemv_is_one_row_linear():
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(1, 1, 24, generator=g), torch.randn(5, 24, generator=g), torch.randn(5, generator=g)
    torch.testing.assert_close(ref.gemv(x, w, b), torch.nn.functional.linear(x, w, b), rtol=0, atol=0)
    with pytest.raises(ValueError, match="one row"):
        ref.gemv(torch.randn(2, 24), w)
    # CPU / several rows: decoder.linear is F.linear exactly
    x2 = torch.randn(3, 24, generator=g)
    assert torch.equal(decoder.linear(x2, w, b), torch.nn.functional.linear(x2, w, b))


def test_launch_settings_restore_on_exit_and_on_error():
    from frspec_cuda import _library

    original = decoder.set_programmatic_launch(True)
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with decoder.launch_settings(pdl=False, gemv=False):
                assert decoder.GEMV_ENABLED is False
                raise RuntimeError("inside")
        assert decoder.GEMV_ENABLED is True
        # PDL back on after the block (with the library; without it the setter is a no-op)
        assert decoder.set_programmatic_launch(True) is _library.LOADED
    finally:
        decoder.set_programmatic_launch(original)


@requires_kernel("gemv")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K,bias", [(1, 8, False), (7, 24, True), (4096, 4096, False), (6144, 4096, True),
                                      (1000, 14336, False), (129, 1016, False), (33, 4104, True)])
def test_gemv_kernel_follows_the_rule(N, K, bias, dtype):
    g = torch.Generator(device="cuda").manual_seed(N * 31 + K)
    x = torch.randn(1, 1, K, device="cuda", generator=g).to(dtype)
    w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).to(dtype)
    b = torch.randn(N, device="cuda", generator=g).to(dtype) if bias else None
    poison_cuda_allocator()
    got = decoder.gemv(x, w, b)
    assert got.shape == (1, 1, N) and got.dtype == dtype
    exact = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    _close_to_rule(got, torch.nn.functional.linear(x, w, b), exact, f"gemv {N}x{K} {dtype}")
    assert torch.equal(decoder.linear(x, w, b), got)  # one row on CUDA: linear takes the kernel


@requires_kernel("gemv_silu_and_mul")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("I,K", [(1, 8), (13, 24), (14336, 4096), (1000, 1016)])
def test_gemv_silu_and_mul_kernel_follows_the_rule(I, K, dtype):
    g = torch.Generator(device="cuda").manual_seed(I * 17 + K)
    x = torch.randn(1, 1, K, device="cuda", generator=g).to(dtype)
    w = (torch.randn(2 * I, K, device="cuda", generator=g) * (3 / K ** 0.5)).to(dtype)
    poison_cuda_allocator()
    got = decoder.gemv_silu_and_mul(x, w)
    assert got.shape == (1, 1, I) and got.dtype == dtype
    exact = ref.silu_and_mul(torch.nn.functional.linear(x.double(), w.double()))
    _close_to_rule(got, ref.gemv_silu_and_mul(x, w), exact, f"gemv_silu_and_mul {I}x{K} {dtype}")
    # the same accumulation and roundings as the two kernels it replaces
    assert torch.equal(got, decoder.silu_and_mul(decoder.gemv(x, w)))
    assert torch.equal(decoder.linear_silu_and_mul(x, w), got)
    x3 = torch.randn(3, K, device="cuda", generator=g).to(dtype)  # several rows: cuBLAS + silu_and_mul
    assert torch.equal(decoder.linear_silu_and_mul(x3, w), decoder.silu_and_mul(torch.nn.functional.linear(x3, w)))


@requires_kernel("rms_norm_gemv")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K,residual,silu,bias", [(4096, 4096, True, False, False), (6144, 4096, True, False, True),
                                                    (14336, 4096, True, True, False), (37, 1016, False, False, False),
                                                    (5, 24, False, True, False), (300, 16384, True, False, False)])
def test_rms_norm_gemv_kernel_follows_the_rule(N, K, residual, silu, bias, dtype):
    g = torch.Generator(device="cuda").manual_seed(N + K)
    x = (torch.randn(1, 1, K, device="cuda", generator=g) * 2).to(dtype)
    r = torch.randn(1, 1, K, device="cuda", generator=g).to(dtype) if residual else None
    nw = (1 + 0.2 * torch.randn(K, device="cuda", generator=g)).to(dtype)
    w = (torch.randn(2 * N if silu else N, K, device="cuda", generator=g) / K ** 0.5).to(dtype)
    b = torch.randn(N, device="cuda", generator=g).to(dtype) if bias else None
    poison_cuda_allocator()
    y, s = decoder.rms_norm_linear(x, r, nw, 1e-5, w, b, silu_and_mul=silu)
    expect_s = x + r if residual else x
    assert torch.equal(s, expect_s)  # the residual stream, rounded once as eager
    h64 = ref.rms_norm(expect_s.double(), nw.double(), 1e-5)
    p64 = torch.nn.functional.linear(h64, w.double(), None if b is None else b.double())
    h = ref.rms_norm(expect_s, nw, 1e-5)
    eager = torch.nn.functional.linear(h, w, b)
    exact = ref.silu_and_mul(p64) if silu else p64
    _close_to_rule(y, ref.silu_and_mul(eager) if silu else eager, exact, f"rms_norm_gemv {N}x{K} {dtype}")
    assert y.shape == (1, 1, N)


@requires_kernel("rms_norm_gemv")
def test_rms_norm_gemv_rejects_bad_inputs_and_falls_back():
    dev, dt = "cuda", torch.bfloat16
    x, w, nw = (torch.randn(1, 64, device=dev, dtype=dt), torch.randn(16, 64, device=dev, dtype=dt),
                torch.ones(64, device=dev, dtype=dt))
    op = torch.ops.frspec_cuda.rms_norm_gemv
    with pytest.raises(RuntimeError, match="norm_weight must be"):
        op(x, None, nw[:32], 1e-5, w, None, False)
    with pytest.raises(RuntimeError, match="residual shape"):
        op(x, x[:, :32], nw, 1e-5, w, None, False)
    with pytest.raises(RuntimeError, match="<= 16384"):
        op(torch.randn(1, 24584, device=dev, dtype=dt), None, torch.ones(24584, device=dev, dtype=dt), 1e-5,
           torch.randn(2, 24584, device=dev, dtype=dt), None, False)
    with pytest.raises(RuntimeError, match="norm_weight dtype"):
        op(x, None, nw.half(), 1e-5, w, None, False)
    # several rows: the unfused path (add_rms_norm, then cuBLAS)
    x3, r3 = torch.randn(3, 64, device=dev, dtype=dt), torch.randn(3, 64, device=dev, dtype=dt)
    y, s = decoder.rms_norm_linear(x3, r3, nw, 1e-5, w)
    h, s2 = decoder.add_rms_norm(x3, r3, nw, 1e-5)
    assert torch.equal(s, s2) and torch.equal(y, torch.nn.functional.linear(h, w))


@requires_kernel("gemv")
def test_gemv_rejects_bad_inputs():
    dev, dt = "cuda", torch.bfloat16
    w = torch.randn(16, 64, device=dev, dtype=dt)
    with pytest.raises(RuntimeError, match="one row"):
        decoder.gemv(torch.randn(2, 64, device=dev, dtype=dt), w)
    with pytest.raises(RuntimeError, match="one row"):
        decoder.gemv(torch.randn(1, 32, device=dev, dtype=dt), w)
    with pytest.raises(RuntimeError, match="weight dtype"):
        decoder.gemv(torch.randn(1, 64, device=dev, dtype=dt), w.half())
    with pytest.raises(RuntimeError, match="multiple of 8"):
        decoder.gemv(torch.randn(1, 12, device=dev, dtype=dt), torch.randn(4, 12, device=dev, dtype=dt))
    with pytest.raises(RuntimeError, match="bias must be"):
        decoder.gemv(torch.randn(1, 64, device=dev, dtype=dt), w, torch.randn(15, device=dev, dtype=dt))
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        decoder.gemv(torch.randn(65, device=dev, dtype=dt)[1:], w)
    with pytest.raises(RuntimeError, match="weight must be"):
        decoder.gemv(torch.randn(1, 64, device=dev, dtype=dt), w.view(-1))
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        torch.ops.frspec_cuda.gemv(torch.randn(1, 64, device=dev, dtype=dt), w.cpu())
    with pytest.raises(RuntimeError, match="2 \\* intermediate"):
        decoder.gemv_silu_and_mul(torch.randn(1, 64, device=dev, dtype=dt), w[:15].contiguous())
    with pytest.raises(RuntimeError, match="one row"):
        decoder.gemv_silu_and_mul(torch.randn(2, 64, device=dev, dtype=dt), w)
    # decoder.linear falls back to cuBLAS where the kernel cannot take the input
    x = torch.randn(65, device=dev, dtype=dt)[1:]
    assert torch.equal(decoder.linear(x, w), torch.nn.functional.linear(x, w))


@requires_kernel("gemv")
def test_programmatic_launch_chain_equals_serial_launches():
    """A CUDA graph of dependent kernels launched with PDL (each may start before its
    predecessor ends and must wait before reading its output) gives the bits of the same
    chain launched without PDL. A kernel that read its input too early would see the
    previous iteration's (or poisoned) values."""
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(5)
    H, I = 2048, 5632
    w_up = (torch.randn(2 * I, H, device=dev, generator=g) / H ** 0.5).to(dt)
    w_down = (torch.randn(H, I, device=dev, generator=g) / I ** 0.5).to(dt)
    norm_w = (1 + 0.1 * torch.randn(H, device=dev, generator=g)).to(dt)
    x0 = torch.randn(1, 1, H, device=dev, generator=g).to(dt)

    def chain(x):
        delta = torch.zeros_like(x)
        for i in range(12):
            if i % 2:
                act, x = decoder.rms_norm_linear(delta, x, norm_w, 1e-5, w_up, silu_and_mul=True)
            else:
                h, x = decoder.add_rms_norm(delta, x, norm_w, 1e-5)
                act = decoder.gemv_silu_and_mul(h, w_up)
            delta = decoder.gemv(act, w_down)
        return x + delta

    results = {}
    for pdl in (False, True):
        with decoder.launch_settings(pdl=pdl):
            x = x0.clone()
            chain(x)  # warm-up outside the graph
            graph = torch.cuda.CUDAGraph()
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                out = chain(x)
            poison_cuda_allocator()
            graph.replay()
            torch.cuda.synchronize()
            results[pdl] = (out.clone(), chain(x0.clone()))
    assert torch.isfinite(results[False][0]).all()
    assert torch.equal(results[True][0], results[False][0])  # graph, PDL vs serial
    assert torch.equal(results[True][1], results[False][0])  # eager with PDL vs graph without
