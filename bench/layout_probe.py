"""Does the KV cache's layout limit tree_attention at 4K? The same bytes, rows per tile, CTAs
and split count two ways: the op's [B, L, Hkv=8, D] cache (a 128-key tile of one KV head is
128 rows of 256 bytes at a 2 KB stride) and B * 8 sequences of one KV head (G = 4 query
heads each: the tile is 32 KB contiguous). Also a copy of the same bytes. Medians of
interleaved rounds, CUDA-graph GPU time over L2-cold input sets.
python bench/layout_probe.py [rounds] [B,N,prefix,splits;...]"""
import statistics
import sys

import torch

from frspec_cuda import tree
from frspec_cuda.benchmarks.timing import graph_time_us, n_sets
from frspec_cuda.reference import tree as ref

D, G = 128, 4
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
shapes = [(4, 16, 4096, 2), (4, 60, 4096, 2), (1, 60, 32768, 8), (4, 16, 32768, 2)]
if len(sys.argv) > 2:
    shapes = [tuple(int(x) for x in c.split(",")) for c in sys.argv[2].split(";")]
dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)


def case(B, hkv, N, prefix):
    L = prefix + N
    q = torch.randn(B, N, hkv * G, D, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, L, hkv, D, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, L, hkv, D, device=dev, dtype=torch.bfloat16, generator=g)
    parents = torch.full((B, N), -1, dtype=torch.int32)
    for i in range(1, N):
        parents[:, i] = max(0, (i - 1) // 4)
    mask = ref.ancestor_mask(parents).to(dev)
    return q, k, v, torch.full((B,), prefix, dtype=torch.int32, device=dev), mask


for B, N, prefix, splits in shapes:
    kv_bytes = 2 * B * (prefix + N) * 8 * D * 2
    n = n_sets(kv_bytes, dev)
    sets = {"Hkv=8 (op layout)": [case(B, 8, N, prefix) for _ in range(n)],
            "Hkv=1 x8 seqs": [case(B * 8, 1, N, prefix) for _ in range(n)]}
    half = kv_bytes // 2
    copies = [(torch.empty(half, dtype=torch.uint8, device=dev),
               torch.randint(0, 255, (half,), dtype=torch.uint8, device=dev)) for _ in range(n)]
    calls = {name: (lambda i, s=s: tree.tree_attention(*s[i % n], impl="wgmma", num_splits=splits, validate=False))
             for name, s in sets.items()}
    calls["copy"] = lambda i: copies[i % n][0].copy_(copies[i % n][1])
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, f in calls.items():
            times[name].append(graph_time_us(f, dev, max(n, 4)))
    cells = [f"{name} {statistics.median(t):6.1f}" for name, t in times.items()]
    print(f"B={B} N={N:3d} prefix={prefix:5d} splits={splits}: " + "  ".join(cells), flush=True)
    del sets, copies
