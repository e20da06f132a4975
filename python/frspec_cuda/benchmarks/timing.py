"""Timing and hardware ceilings shared by the Python benchmarks."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def time_us(fn: Callable[[int], object], device: torch.device, warmup: int = 10, reps: int = 30,
            inner: int = 10) -> float:
    """Median time per call of `fn(i)` in microseconds; `i` lets `fn` rotate input sets so
    repeated runs do not measure the cache. On CUDA each sample times `inner` back-to-back
    calls between two events: the GPU time of a call whose launches the host keeps ahead
    of (host overhead shows only where it exceeds the GPU work)."""
    for i in range(warmup):
        fn(i)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for r in range(reps):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(inner):
                fn(r * inner + i)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) * 1e3 / inner)
    else:
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def capture_graph(fn: Callable[[int], object], device: torch.device, calls: int) -> "torch.cuda.CUDAGraph | None":
    """`fn(i)`, i = 0..calls-1, captured back to back in one CUDA graph after one warm-up
    pass (compilation, autotuning, lazy allocations); None if the calls cannot be captured."""
    for i in range(calls):
        fn(i)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn(i)
    except Exception:  # noqa: BLE001 - the caller falls back to eager timing
        torch.cuda.synchronize(device)
        return None
    return graph


def replay_time_us(graph: "torch.cuda.CUDAGraph", device: torch.device, calls: int, reps: int = 20) -> float:
    """GPU time per call of a graph of `calls` calls, from the median of `reps` replays."""
    return time_us(lambda i: graph.replay(), device, warmup=2, reps=reps, inner=1) / calls


def graph_time_us(fn: Callable[[int], object], device: torch.device, calls: int, reps: int = 20) -> float | None:
    """GPU time per call of `fn(i)` in microseconds, i = 0..calls-1 captured back to back in
    one CUDA graph and replayed (how a decoding loop runs it: no host launch overhead).
    None if the calls cannot be captured."""
    graph = capture_graph(fn, device, calls)
    return None if graph is None else replay_time_us(graph, device, calls, reps)


def wall_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of `fn`, the device synchronised before and after
    (for long, host-driven runs: a prefill, a whole generation)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def copy_bandwidth_gbs(device: torch.device, nbytes: int | None = None) -> float:
    """Copy bandwidth in GB/s counting bytes read plus written (a large clone)."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    us = time_us(lambda i: dst.copy_(src), device, warmup=3, reps=10, inner=2)
    return 2 * nbytes / (us * 1e3)


def n_sets(bytes_per_set: int, device: torch.device) -> int:
    """How many input sets to rotate through so the working set exceeds the L2 cache."""
    if device.type != "cuda":
        return 1
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    return max(1, min(64, -(-4 * l2 // max(bytes_per_set, 1))))
