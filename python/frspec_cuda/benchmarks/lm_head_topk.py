"""fr_lm_head_topk (FR-Spec draft head) vs torch: linear + log_softmax + topk + id remap on
the sliced head, and the same on the full head; floor = weight bytes / copy bandwidth."""

from __future__ import annotations

import torch

from .. import _library, ops
from .timing import copy_bandwidth_gbs, time_us

# (model, hidden size, FR vocabulary K, full vocabulary)
MODELS = [
    ("Llama-3-8B", 4096, 32768, 128256),
    ("Llama-3.2-1B", 2048, 16384, 128256),
    ("Qwen2-7B", 3584, 32768, 152064),
]
TOP_K = 10  # EAGLE-2's per-node top-k


def torch_head(hidden, weight, ids, k):
    logprobs = torch.log_softmax(torch.nn.functional.linear(hidden, weight).float(), dim=-1)
    values, index = torch.topk(logprobs, k, dim=-1)
    return ids[index], values


def run(device: torch.device, quick: bool = False) -> list[dict]:
    if device.type != "cuda":
        return [dict(op="fr_lm_head_topk", note="GPU benchmark: skipped on CPU")]
    copy_gbs = copy_bandwidth_gbs(device)
    have_kernel = _library.has_kernel("fr_lm_head_topk")
    rows = []
    models = MODELS[:1] if quick else MODELS
    for name, H, K, V in models:
        g = torch.Generator(device=device).manual_seed(0)
        full = (torch.randn(V, H, generator=g, device=device) * H**-0.5).to(torch.bfloat16)
        fr_ids = torch.randperm(V, generator=g, device=device)[:K].sort().values.to(torch.int32)
        sliced = full[fr_ids.long()].contiguous()
        all_ids = torch.arange(V, device=device, dtype=torch.int32)
        for n in (1, 10, 60):
            hidden = torch.randn(n, H, generator=g, device=device).to(torch.bfloat16)
            timed = {
                "torch sliced": lambda: torch_head(hidden, sliced, fr_ids, TOP_K),
                "torch full": lambda: torch_head(hidden, full, all_ids, TOP_K),
            }
            if have_kernel:
                timed["frspec sliced"] = lambda: ops.fr_lm_head_topk(hidden, sliced, fr_ids, TOP_K)
                timed["frspec full"] = lambda: ops.fr_lm_head_topk(hidden, full, all_ids, TOP_K)
            us = {impl: time_us(lambda i, f=f: f(), device, warmup=3, reps=10) for impl, f in timed.items()}
            floor_sliced = K * H * 2 / (copy_gbs * 1e3)
            floor_full = V * H * 2 / (copy_gbs * 1e3)
            for impl, t in us.items():
                floor = floor_full if impl.endswith("full") else floor_sliced
                rows.append(dict(
                    op="fr_lm_head_topk", model=name, K=V if impl.endswith("full") else K, n=n,
                    impl=impl, time_us=round(t, 1), floor_us=round(floor, 1), x_floor=round(t / floor, 2),
                    vs_torch_sliced=round(us["torch sliced"] / t, 2), vs_torch_full=round(us["torch full"] / t, 2),
                ))
        del full, sliced
    return rows
