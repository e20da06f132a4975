"""Fused decoder-layer ops (rms_norm, add_rms_norm, silu_and_mul, rope_qk_store_kv): our
kernels vs the same math in eager torch at Llama-3-8B shapes, one decode token and a
512-token prefill, with the bytes each moves over the copy bandwidth measured in the run
as the floor. time_us is GPU time inside a CUDA graph (how the decode step runs them);
eager_launch_us the time per call launched one by one from Python (host-bound on this
VM). At decode sizes every op is latency-bound: the point of the kernels is one launch
instead of several (the kernel count is given). The one-row matrix products of a decode
step (`gemv`) are bandwidth-bound: ours (with and without programmatic dependent launch)
vs cuBLAS, against the weight bytes over the copy bandwidth."""

from __future__ import annotations

import torch

from .. import _library, decoder
from ..reference import decoder as ref
from .timing import copy_bandwidth_gbs, time_us

H, I, HQ, HKV, D = 4096, 14336, 32, 8, 128


def _count_kernels(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


class _EagerLayer:
    """The same math as eager PyTorch runs it in a Llama layer (what our model did before
    the fused kernels): references, and RoPE + scatter into the cache for the store."""
    rms_norm, add_rms_norm, silu_and_mul = staticmethod(ref.rms_norm), staticmethod(ref.add_rms_norm), \
        staticmethod(ref.silu_and_mul)

    @staticmethod
    def rope_qk_store_kv(qkv, positions, inv_freq, slots, k_cache, v_cache, num_heads):
        B, L, Hkv, D = k_cache.shape
        heads = qkv.view(B, qkv.shape[1], num_heads + 2 * Hkv, D)
        q = ref.rope(heads[:, :, :num_heads], positions, inv_freq).contiguous()
        k = ref.rope(heads[:, :, num_heads:num_heads + Hkv], positions, inv_freq)
        idx = slots.view(B, -1, 1, 1).expand(B, slots.shape[1], Hkv, D)
        k_cache.scatter_(1, idx, k)
        v_cache.scatter_(1, idx, heads[:, :, num_heads + Hkv:])
        return q


def _graph_us(call, per_graph: int = 20, replays: int = 20) -> float:
    """GPU time per call with launch overhead removed: `per_graph` calls captured in one
    CUDA graph (how a decode step runs them), replayed; median over replays."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        call()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(per_graph):
            call()
    g.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / per_graph)
    return sorted(times)[len(times) // 2]


def run(device: torch.device, quick: bool = False) -> list[dict]:
    if device.type != "cuda" or not _library.has_kernel("rope_qk_store_kv"):
        return [dict(op="decoder", note="needs a GPU and the kernels")]
    dt = torch.bfloat16
    copy_gbs = copy_bandwidth_gbs(device)
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    inv = torch.rand(D // 2, device=device, generator=g)
    for T in (1, 512):
        x = torch.randn(T, H, device=device, dtype=dt, generator=g)
        w = torch.randn(H, device=device, dtype=dt, generator=g)
        gu = torch.randn(T, 2 * I, device=device, dtype=dt, generator=g)
        qkv = torch.randn(1, T, (HQ + 2 * HKV) * D, device=device, dtype=dt, generator=g)
        pos = torch.arange(T, device=device).view(1, T) + 100
        kc, vc = torch.zeros(2, 1, T + 128, HKV, D, device=device, dtype=dt).unbind(0)
        e = 2  # bytes per element
        cases = {
            "rms_norm": (lambda f: f.rms_norm(x, w, 1e-5), 2 * T * H * e),
            "add_rms_norm": (lambda f: f.add_rms_norm(x, x, w, 1e-5), 4 * T * H * e),
            "silu_and_mul": (lambda f: f.silu_and_mul(gu), 3 * T * I * e),
            "rope_qk_store_kv": (lambda f: f.rope_qk_store_kv(qkv, pos, inv, pos, kc, vc, HQ),
                                 2 * T * (HQ + 2 * HKV) * D * e),
        }
        for name, (call, nbytes) in cases.items():
            floor_us = nbytes / (copy_gbs * 1e3)
            res = {}
            for impl, mod in (("frspec_cuda", decoder), ("torch eager", _EagerLayer)):
                res[impl] = _graph_us(lambda: call(mod))
                rows.append(dict(op=name, impl=impl, shape=f"{T} token{'s' if T > 1 else ''}, Llama-3-8B",
                                 time_us=round(res[impl], 2), eager_launch_us=round(time_us(lambda i: call(mod),
                                                                                          device), 2),
                                 floor_us=round(floor_us, 2),
                                 x_floor=round(res[impl] / floor_us, 2), kernels=_count_kernels(lambda: call(mod))))
            rows[-2]["speedup_vs_eager"] = round(res["torch eager"] / res["frspec_cuda"], 2)
    rows += _gemv_rows(device, copy_gbs, quick)
    return rows


# The one-row products of a Llama-3-8B decode step: (name, out_features, in_features)
GEMV_SHAPES = (("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336),
               ("lm_head", 128256, 4096))


def _gemv_rows(device: torch.device, copy_gbs: float, quick: bool) -> list[dict]:
    """Our GEMV (with and without programmatic dependent launch) vs cuBLAS (F.linear) on
    one row, inside a CUDA graph that cycles through enough weight copies (>= 256 MB) that
    nothing is served from L2: back-to-back products as in a decode step."""
    dt, rows = torch.bfloat16, []
    shapes = GEMV_SHAPES[:2] if quick else GEMV_SHAPES
    for name, N, K in shapes:
        nbytes = N * K * 2
        copies = max(2, -(-(256 << 20) // nbytes))
        ws = [torch.randn(N, K, device=device, dtype=dt) for _ in range(copies)]
        x = torch.randn(1, K, device=device, dtype=dt)
        floor_us = nbytes / (copy_gbs * 1e3)
        res = {}
        impls = [("frspec_cuda gemv + PDL", True, decoder.gemv), ("frspec_cuda gemv, no PDL", False, decoder.gemv),
                 ("cuBLAS (F.linear)", False, torch.nn.functional.linear),
                 ("frspec_cuda gemv + PDL + 24 MiB L2 prefetch", True, decoder.gemv)]
        if name == "gate_up":  # + silu_and_mul: fused in the GEMV vs its own kernel after it
            impls += [("frspec_cuda gemv_silu_and_mul (fused) + PDL", True, decoder.gemv_silu_and_mul),
                      ("frspec_cuda gemv, then silu_and_mul + PDL", True,
                       lambda x, w: decoder.silu_and_mul(decoder.gemv(x, w)))]
        if name == "qkv":  # + the residual add and RMSNorm before it: fused in the GEMV vs add_rms_norm first
            resid, nw = torch.randn(1, K, device=device, dtype=dt), torch.ones(K, device=device, dtype=dt)
            impls += [("frspec_cuda rms_norm_gemv (add + norm fused) + PDL", True,
                       lambda x, w: decoder.rms_norm_linear(x, resid, nw, 1e-5, w)[0]),
                      ("frspec_cuda add_rms_norm, then gemv + PDL", True,
                       lambda x, w: decoder.gemv(decoder.add_rms_norm(x, resid, nw, 1e-5)[0], w))]
        for impl, pdl, fn in impls:
            with decoder.launch_settings(pdl=pdl, l2_prefetch_bytes=(24 << 20) if "L2 prefetch" in impl else None):
                res[impl] = _graph_us(lambda: [fn(x, w) for w in ws], per_graph=2) / copies
            rows.append(dict(op="gemv", impl=impl, shape=f"{name}: [1, {K}] x [{N}, {K}]^T bf16",
                             time_us=round(res[impl], 2), floor_us=round(floor_us, 2),
                             x_floor=round(res[impl] / floor_us, 3),
                             read_gbs=round(nbytes / res[impl] / 1e3, 1)))
        rows[-len(impls)]["speedup_vs_cublas"] = round(res["cuBLAS (F.linear)"] / res["frspec_cuda gemv + PDL"], 3)
        del ws
    return rows
