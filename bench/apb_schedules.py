"""The APB wgmma schedules head to head: each round times every schedule once (interleaved,
so clock and thermal drift hit all alike), medians over the rounds, in TFLOP/s of useful
work and % of the bf16 matmul peak measured in the same run; Flex once per shape.
python bench/apb_schedules.py [rounds] [schedule,schedule,...]"""
import statistics
import sys

import torch

from frspec_cuda.apb import apb_attention, attention_flops
from frspec_cuda.benchmarks.apb import D, HKV, HQ, LAYOUTS, _flex_call
from frspec_cuda.benchmarks.timing import time_us
from frspec_cuda.benchmarks.tree import matmul_tflops

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
dev = torch.device("cuda")
SCHEDULES = (sys.argv[2].split(",") if len(sys.argv) > 2 else
             ["wgmma_ws", "wgmma_pingpong", "wgmma_pingpong_windows", "wgmma_pingpong_overlap"])
peak = matmul_tflops(dev)
print(f"bf16 matmul peak {peak:.1f} TF/s; medians of {rounds} interleaved rounds")
g = torch.Generator(device=dev).manual_seed(0)
for name, host in (("128K", 1), ("128K", 4), ("128K", 7), ("32K", 7)):
    L, A_host, P_host = LAYOUTS[name]
    A, P = A_host, host * P_host
    q = torch.randn(A + L, HQ, D, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(P + A + L, HKV, D, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(P + A + L, HKV, D, device=dev, dtype=torch.bfloat16, generator=g)
    flops = attention_flops(A, L, P, D, HQ)
    times = {s: [] for s in SCHEDULES}
    for _ in range(rounds):
        for s in SCHEDULES:
            times[s].append(time_us(lambda i, s=s: apb_attention(q, k, v, A, P, impl=s), dev, warmup=1, reps=3,
                                    inner=2))
    flex = _flex_call(q, k, v, A, P)
    flex_us = time_us(lambda i: flex(), dev, warmup=2, reps=5, inner=2)
    line = [f"{name} host {host}:"]
    for s in SCHEDULES:
        t = statistics.median(times[s])
        tf = flops / (t * 1e6)
        line.append(f"{s.replace('wgmma_', '')} {tf:.0f} ({100 * tf / peak:.1f}%, {flex_us / t:.2f}x flex, "
                    f"spread {100 * (max(times[s]) - min(times[s])) / t:.0f}%)")
    print("  ".join(line), flush=True)
    del q, k, v
