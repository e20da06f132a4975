"""Tree attention vs SDPA (dense boolean mask) and FlexAttention (block mask), against the
floor max(K/V bytes / copy bandwidth, FLOPs / bf16 matmul rate), both measured in the run;
and one speculative step's tree bookkeeping (build + greedy verify + KV compaction over
32 layers) replayed from a CUDA graph."""

from __future__ import annotations

import os
import statistics

import torch
import torch.nn.functional as F

from .. import _library, decoder, tree
from ..reference import tree as ref
from .timing import capture_graph, copy_bandwidth_gbs, n_sets, replay_time_us, time_us

HQ, HKV, D = 32, 8, 128  # Llama-3-8B attention (Llama-3.2-1B: the same heads at head_dim 64)
ROUNDS = 3  # timing rounds per shape (every variant once per round; medians)


def matmul_tflops(device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    us = time_us(lambda i: a @ b, device, warmup=3, reps=10, inner=3)
    return 2 * 8192**3 / (us * 1e-6) / 1e12


def _case(B, N, prefix, device, g, max_len: int = 0, head_dim: int = D):
    L = max(prefix + N, max_len)  # (max_len > prefix + N: caches with room to grow)
    q = torch.randn(B, N, HQ, head_dim, device=device, dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, L, HKV, head_dim, device=device, dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, L, HKV, head_dim, device=device, dtype=torch.bfloat16, generator=g)
    parents = torch.full((B, N), -1, dtype=torch.int32)
    for i in range(1, N):  # EAGLE-like: shallow, bushy
        parents[:, i] = max(0, (i - 1) // 4)
    mask = ref.ancestor_mask(parents).to(device)
    cache_len = torch.full((B,), prefix, dtype=torch.int32, device=device)
    return q, k, v, cache_len, mask


def _dense_mask(cache_len, mask, N, L):
    bits = ref.unpack_mask(mask, N)  # [B, N, N]
    B = mask.shape[0]
    prefix = torch.ones(B, N, L - N, dtype=torch.bool, device=mask.device)
    return torch.cat([prefix, bits], dim=-1).unsqueeze(1)  # cache_len == L - N here


def _flex(sets, N) -> dict:
    """FlexAttention over each input set, one block mask from the tree mask, compiled per
    shape. Returns {name: call(i)} for every formulation that compiles: native GQA (inductor
    picks its decoding kernel for short query lengths, which finds no configuration for some
    N, e.g. 60), native GQA with the query rows padded to a multiple of 128 (its prefill
    kernel), and K/V expanded to the query heads. The caller reports the fastest."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q0, k0 = sets[0][0], sets[0][1]
    B, L, Hq, D = k0.shape[0], k0.shape[1], q0.shape[2], q0.shape[3]
    G = Hq // k0.shape[2]
    dense = _dense_mask(sets[0][3], sets[0][4], N, L)[:, 0]  # [B, N, L]: the same tree in every set
    torch._dynamo.reset()  # compilations per shape: past dynamo's recompile limit it would run eagerly
    calls = {}

    def build(name, n_rows, expand):
        allowed = torch.zeros(B, n_rows, L, dtype=torch.bool, device=q0.device)
        allowed[:, :N] = dense
        allowed[:, N:, 0] = True  # padding rows see one key (no empty rows)

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed[b, q_idx, kv_idx]

        bm = create_block_mask(mask_mod, B, None, n_rows, L, device=q0.device)
        fn = torch.compile(flex_attention, dynamic=False)
        ts = []
        for q, k, v, _, _ in sets:
            if n_rows > N:
                q = torch.cat([q, q.new_zeros(B, n_rows - N, Hq, D)], dim=1)
            if expand:
                k, v = k.repeat_interleave(G, 2), v.repeat_interleave(G, 2)
            ts.append((q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))
        call = lambda i: fn(*ts[i % len(ts)], block_mask=bm, enable_gqa=not expand)  # noqa: E731
        try:
            call(0)
        except Exception:  # noqa: BLE001 - a formulation inductor cannot compile: not a baseline
            return
        calls[name] = call

    build("flex", N, False)
    if N % 128:
        build("flex, rows padded to 128", -(-N // 128) * 128, False)
    build("flex, GQA expanded", N, True)
    return calls


def wgmma_available(device) -> bool:
    return _library.has_kernel("tree_attention") and torch.cuda.get_device_capability(device) == (9, 0)


def run(device: torch.device, quick: bool = False) -> list[dict]:
    """Every implementation is timed as GPU time: `calls` back-to-back calls captured in one
    CUDA graph and replayed (eager-only baselines are marked), rotating through enough
    input sets that K/V come from HBM, not from the L2 cache (as in a decode step, where
    the other layers' weights and caches pass through L2 in between)."""
    if device.type != "cuda":
        return [dict(op="tree_attention", note="GPU benchmark: skipped on CPU")]
    have = _library.has_kernel("tree_attention")
    copy_gbs = copy_bandwidth_gbs(device)
    tflops = matmul_tflops(device)
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    configs = [(B, N, p) for B in (1, 4) for N in (16, 60, 128) for p in (1024, 4096, 32768)]
    # one-node trees: autoregressive decode steps (the decode kernel vs wgmma)
    configs += [(1, 1, 512), (1, 1, 4096), (1, 1, 32768), (4, 1, 4096), (16, 1, 4096)]
    # batch sizes whose row tiles do not fill the SMs in one wave: the multi-wave split rule
    # against the one-wave split count
    odd_batches = [(3, 60, 32768), (5, 60, 8192), (5, 60, 32768), (6, 128, 8192), (5, 128, 32768)]
    configs += odd_batches
    # head_dim 64 (Llama-3.2-1B, FR-Spec's small model): the wgmma kernel at 64 vs mma.sync
    small = [(B, N, p, 64) for B in (1, 4) for N in (16, 60) for p in (4096, 32768)]
    configs += small
    if quick:
        configs = [(1, 16, 32768), (1, 60, 1024), (1, 60, 4096), (1, 60, 32768), (4, 128, 32768), (1, 1, 32768),
                   (1, 60, 4096, 64)]
    for B, N, prefix, *dim in configs:
        Dh = dim[0] if dim else D
        L = prefix + N
        kv_bytes = 2 * B * L * HKV * Dh * 2 + 2 * B * N * HQ * Dh * 2
        n = n_sets(kv_bytes, device)
        sets = [_case(B, N, prefix, device, g, head_dim=Dh) for _ in range(n)]
        calls = max(n, 4)
        flops = 4 * B * N * HQ * L * Dh
        floor = max(kv_bytes / (copy_gbs * 1e3), flops / (tflops * 1e6))
        timed = {}
        if have and N == 1:
            timed["frspec"] = lambda i: tree.tree_attention(*sets[i % n], validate=False)
            timed["frspec decode kernel"] = lambda i: tree.tree_attention(*sets[i % n], impl="mma", validate=False)
            if wgmma_available(device):
                timed["frspec wgmma"] = lambda i: tree.tree_attention(*sets[i % n], impl="wgmma", validate=False)
        elif have and (B, N, prefix) in odd_batches:
            auto = tree.tree_attention_num_splits(B, N, HQ, HKV, D, L)
            timed[f"frspec ({auto} splits)"] = lambda i: tree.tree_attention(*sets[i % n], validate=False)
            if wgmma_available(device):
                ctas = -(-N * (HQ // HKV) // 128) * HKV * B
                sms = torch.cuda.get_device_properties(device).multi_processor_count
                one = max(1, min(sms // ctas, 8))  # the split count of one full wave
                timed[f"frspec wgmma, one wave ({one} splits)"] = lambda i, one=one: tree.tree_attention(
                    *sets[i % n], impl="wgmma", num_splits=one, validate=False)
        elif have:
            timed["frspec"] = lambda i: tree.tree_attention(*sets[i % n], validate=False)
            timed["frspec mma"] = lambda i: tree.tree_attention(*sets[i % n], impl="mma", validate=False)
            if wgmma_available(device):
                timed["frspec wgmma"] = lambda i: tree.tree_attention(*sets[i % n], impl="wgmma", validate=False)
            if wgmma_available(device) and Dh == D:
                timed["frspec wgmma serial"] = lambda i: tree.tree_attention(*sets[i % n], impl="wgmma_serial",
                                                                             validate=False)
                if B == 1 and N in (16, 60) and prefix >= 4096:  # how the split count trades
                    for sp in (4, 6, 7, 8, 16):
                        timed[f"frspec wgmma, {sp} splits"] = lambda i, sp=sp: tree.tree_attention(
                            *sets[i % n], impl="wgmma", num_splits=sp, validate=False)
                    for sp in (6, 8):
                        timed[f"frspec wgmma, {sp} splits, merge kernel"] = lambda i, sp=sp: tree.tree_attention(
                            *sets[i % n], impl="wgmma", num_splits=sp, validate=False)
            timed["frspec mma, no PDL"] = timed["frspec mma"]  # PDL lets back-to-back launches overlap
        am = _dense_mask(sets[0][3], sets[0][4], N, L)
        sd = [(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)) for q, k, v, _, _ in sets]
        timed["sdpa"] = lambda i: F.scaled_dot_product_attention(*sd[i % n], attn_mask=am, enable_gqa=True)
        if N > 1 and prefix >= 4096 and (B, N, prefix) not in odd_batches:  # the goal's shapes
            flex = _flex(sets, N)
            timed.update(flex)
            if not flex:
                rows.append(dict(op="tree_attention", B=B, N=N, prefix=prefix, head_dim=Dh, impl="flex",
                                 note="no formulation compiled"))
            # What one kernel that only moves the same bytes takes in this harness (a copy:
            # half read, half written): the floor's bandwidth term plus a launch, a ramp and a
            # drain that any single call pays.
            half = kv_bytes // 2
            copies = [(torch.empty(half, dtype=torch.uint8, device=device),
                       torch.randint(0, 255, (half,), dtype=torch.uint8, device=device)) for _ in range(n)]
            timed["copy of the same bytes (one kernel)"] = lambda i: copies[i % n][0].copy_(copies[i % n][1])
        graphs = {}
        for name, f in timed.items():
            # the split sweep: a cluster where one fits, or the merge kernel (read at launch)
            if name.startswith("frspec wgmma, ") and "splits" in name and "one wave" not in name:
                os.environ["FRSPEC_TREE_CLUSTER"] = "0" if "merge kernel" in name else "1"
            else:
                os.environ.pop("FRSPEC_TREE_CLUSTER", None)
            with decoder.launch_settings(pdl="no PDL" not in name):  # (a graph keeps its launches)
                graphs[name] = capture_graph(f, device, calls)
        os.environ.pop("FRSPEC_TREE_CLUSTER", None)
        # Rounds of every variant in turn, medians: a single pass in a fixed order put the
        # first variant of a shape up to 9% off the same kernel timed later in it.
        samples: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(ROUNDS):
            for name, f in timed.items():
                if graphs[name] is not None:
                    samples[name].append(replay_time_us(graphs[name], device, calls))
                else:
                    with decoder.launch_settings(pdl="no PDL" not in name):
                        samples[name].append(time_us(lambda i, f=f: f(i), device, warmup=3, reps=20))
        us = {name: statistics.median(t) for name, t in samples.items()}
        how = {name: "graph" if graphs[name] is not None else "eager" for name in timed}
        del graphs
        flex_best = min((t for name, t in us.items() if name.startswith("flex")), default=None)
        for name, t in us.items():
            rows.append(dict(op="tree_attention", B=B, N=N, prefix=prefix, head_dim=Dh, impl=name, timing=how[name],
                             time_us=round(t, 1), floor_us=round(floor, 1), x_floor=round(t / floor, 2),
                             speedup_vs_sdpa=round(us["sdpa"] / t, 2),
                             speedup_vs_flex=round(flex_best / t, 2) if flex_best else "",
                             copy_gbs=round(copy_gbs), matmul_tflops=round(tflops, 1)))
    if have:
        rows += _step(device)
    return rows


def _step(device) -> list[dict]:
    """build_dynamic_tree + verify_tree_greedy + compact_kv_cache (32 layers), N = 60,
    EAGLE-2 history (top-k 10, depth 6), replayed from one CUDA graph."""
    g = torch.Generator().manual_seed(0)
    M = 10 + 5 * 100
    hist_tokens = torch.randint(0, 128256, (1, M), generator=g).to(device)
    parents = torch.tensor([[-1] * 10 + [j for d in range(5) for j in range(10 * d, 10 * d + 10) for _ in range(10)]],
                           dtype=torch.int32)[:, :M].to(device)
    scores = (-torch.rand(1, M, generator=g).cumsum(1)).to(device)
    root = torch.tensor([1], device=device)
    cache_len = torch.tensor([1000], dtype=torch.int32, device=device)
    kv = torch.randn(32, 2, 1, 2048, HKV, D, device=device, dtype=torch.bfloat16)
    argmax = torch.randint(0, 128256, (1, 60), device=device)

    def step():
        t = tree.build_dynamic_tree(hist_tokens, parents, scores, root, cache_len, 60, validate=False)
        v = tree.verify_tree_greedy(t.tokens, t.parents, argmax, validate=False)
        tree.compact_kv_cache(kv, cache_len, v.accepted, v.accept_len)
        cache_len.fill_(1000)

    step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    us = time_us(lambda i: graph.replay(), device, warmup=3, reps=20)
    return [dict(op="tree_step", impl="frspec (graph)", what="build(M=510)+verify+compact(32 layers), N=60",
                 time_us=round(us, 1))]
