"""CUDA-graph replay of a decoding step.

A step is a Python function doing in-place work on tensors that outlive it (caches,
cache lengths, the next input token...) with no host synchronisation and no host-to-
device copies. `GraphedStep` runs it eagerly on CPU (or when graphs are off) and on CUDA
turns it into one graph replay: the first call runs it eagerly on a side stream (warm-up:
cuBLAS workspaces, lazily allocated buffers), the second captures it (capture does not
execute) and replays it, later calls only replay. Several steps made with the same
`pool` and always run in the order they were captured may share one memory pool.
"""

from __future__ import annotations

from typing import Callable

import torch


class GraphedStep:
    def __init__(self, fn: Callable[[], None], device: torch.device, enabled: bool = True, pool=None):
        self.fn = fn
        self.enabled = enabled and device.type == "cuda"
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.pool = pool
        self.stream = torch.cuda.Stream(device) if self.enabled else None

    def __call__(self) -> None:
        self.calls += 1
        if not self.enabled:
            self.fn()
            return
        if self.calls == 1:  # warm-up, eagerly, on the stream the capture will use
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self.fn()
            torch.cuda.current_stream().wait_stream(self.stream)
            return
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=self.pool, stream=self.stream):
                self.fn()
        self.graph.replay()


def graphs_supported(model) -> bool:
    """CUDA graphs need every op of the step to be a kernel (no reference fallback that
    synchronises): a CUDA model in fp16/bf16 with the kernels built."""
    from . import _library

    return (model.device.type == "cuda" and model.dtype in (torch.float16, torch.bfloat16)
            and _library.LOADED and model.cfg.head_dim in (64, 128))
