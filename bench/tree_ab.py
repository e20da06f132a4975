"""Tree attention A/B over an environment knob read at launch (FRSPEC_TREE_CLUSTER=0 / 1: splits
merged by the merge kernel / in a cluster wherever one fits; FRSPEC_TREE_KEYS=128 / 176: the
wgmma kernel's key-tile width), over
implementations (VAR = impl), split counts (VAR = splits; 0 = auto) or programmatic
dependent launch (VAR = pdl; 0 / 1): each round times every value once per shape
(interleaved, so clock drift hits all alike), GPU time from CUDA-graph replays over L2-cold
rotating input sets; medians over rounds.
python bench/tree_ab.py VAR|impl|splits|pdl value,value,... [rounds] [impl] [B,N,prefix[,max_len];...]
(max_len: the caches' capacity, default prefix + N)"""
import os
import statistics
import sys

import torch

from frspec_cuda import decoder, tree
from frspec_cuda.benchmarks.timing import graph_time_us, n_sets
from frspec_cuda.benchmarks.tree import D, HKV, HQ, _case

var, values = sys.argv[1], sys.argv[2].split(",")
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
impl = sys.argv[4] if len(sys.argv) > 4 else "auto"
dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)
print(f"{var} in {values}, impl {impl}, medians of {rounds} interleaved rounds (us)")
SHAPES = ((1, 60, 1024), (1, 60, 4096), (1, 16, 4096), (1, 60, 32768), (1, 16, 32768), (4, 60, 4096), (4, 128, 32768))
if len(sys.argv) > 5:
    SHAPES = [tuple(int(x) for x in c.split(",")) for c in sys.argv[5].split(";")]
for B, N, prefix, *cap in SHAPES:
    L = max([prefix + N] + cap)
    n = n_sets(2 * B * L * HKV * D * 2, dev)
    sets = [_case(B, N, prefix, dev, g, L) for _ in range(n)]
    times = {v: [] for v in values}
    for _ in range(rounds):
        for v in values:
            if var not in ("impl", "splits", "pdl"):
                os.environ[var] = v  # read when the graph is captured
            kind = v if var == "impl" else impl
            sp = int(v) if var == "splits" else 0
            with decoder.launch_settings(pdl=bool(int(v)) if var == "pdl" else None):
                times[v].append(graph_time_us(
                    lambda i: tree.tree_attention(*sets[i % n], impl=kind, num_splits=sp, validate=False), dev,
                    max(n, 4)))
    os.environ.pop(var, None)
    cells = [f"{var}={v} {statistics.median(t):6.1f} (spread {100 * (max(t) - min(t)) / statistics.median(t):.0f}%)"
             for v, t in times.items()]
    print(f"B={B} N={N:3d} prefix={prefix:5d}{f' max_len={L}' if cap else ''}:  " + "  ".join(cells), flush=True)
    del sets
