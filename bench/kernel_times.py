"""Where a tree-attention call's time goes, kernel by kernel: the calls of one shape captured
in a CUDA graph (rotating L2-cold input sets, as the benchmark does), replayed under the
PyTorch profiler; per kernel the median duration, and the median gap from the previous
kernel's end to its start (negative: it overlapped, as with programmatic dependent launch).
python bench/kernel_times.py "B,N,prefix[,max_len];..." [pdl 0|1] [splits]"""
import statistics
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from frspec_cuda import decoder, tree
from frspec_cuda.benchmarks.timing import graph_time_us, n_sets
from frspec_cuda.benchmarks.tree import D, HKV, _case

shapes = [tuple(int(x) for x in c.split(",")) for c in sys.argv[1].split(";")]
pdl = bool(int(sys.argv[2])) if len(sys.argv) > 2 else True
splits = int(sys.argv[3]) if len(sys.argv) > 3 else 0
dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)
for B, N, prefix, *cap in shapes:
    L = max([prefix + N] + cap)
    n = max(n_sets(2 * B * L * HKV * D * 2, dev), 4)
    sets = [_case(B, N, prefix, dev, g, L) for _ in range(n)]
    with decoder.launch_settings(pdl=pdl):
        call = lambda i: tree.tree_attention(*sets[i % n], num_splits=splits, validate=False)  # noqa: E731
        per_call = graph_time_us(call, dev, n)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(n):
                call(i)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                      and e.name not in ("Memcpy DtoD (Device -> Device)",)), key=lambda e: e.time_range.start)
    dur: dict[str, list[float]] = {}
    gap: dict[str, list[float]] = {}
    prev_end = None
    for e in kernels:
        name = e.name.split("<")[0].split("(")[0]
        dur.setdefault(name, []).append(e.time_range.end - e.time_range.start)
        if prev_end is not None and e.time_range.start - prev_end < 50:  # same replay
            gap.setdefault(name, []).append(e.time_range.start - prev_end)
        prev_end = e.time_range.end
    print(f"B={B} N={N} prefix={prefix} L={L} pdl={int(pdl)} splits={splits or 'auto'}: "
          f"{per_call:.1f} us per call (graph replay)")
    for name, d in dur.items():
        gp = gap.get(name, [])
        print(f"  {name:40s} {statistics.median(d):7.2f} us  x{len(d) // 10} per replay"
              f"  gap before {statistics.median(gp) if gp else float('nan'):6.2f} us")
    del sets, graph
