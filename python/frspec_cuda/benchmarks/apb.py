"""APB benchmarks on one GPU.

kernel: `apb_attention` on APB's 8-host layouts (Llama-3.1-8B heads: 32 q / 8 kv, D 128)
    128K: local 16K, anchor 4K, passing r x 2K;  32K: local 4K, anchor 1K, passing r x 512
  for host r = 1 and r = 7 (the most passing) and host 0 (plain causal), in useful TFLOP/s
  against the bf16 matmul peak measured in the run, FlexAttention with the same mask, and
  SDPA's causal flash kernel at the same local length.
prefill: one host's prefill of a Llama-3-8B-shape model (random bf16 weights) in the 8-host
  128K layout (other hosts' passing blocks stood in by copies: compute only) vs a full
  causal prefill of the whole context on this GPU; their ratio is a projection of the
  8-host speedup (no communication), labelled so.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from .. import _library
from ..apb import attention_flops
from ..apb.attention import apb_attention
from .tree import matmul_tflops
from .timing import time_us, wall_seconds

HQ, HKV, D = 32, 8, 128
LAYOUTS = {"128K": (16384, 4096, 2048), "32K": (4096, 1024, 512)}  # local, anchor, passing per host


def _visible(A, P):
    def mask_mod(b, h, q, kv):
        return (kv <= P + q) & ((q >= A) | (kv >= P))
    return mask_mod


def _flex_call(q, k, v, A, P):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    Tq, Tk = q.shape[0], k.shape[0]
    bm = create_block_mask(_visible(A, P), None, None, Tq, Tk, device=q.device)
    torch._dynamo.reset()  # timed right away; past dynamo's recompile limit flex would run eagerly
    fn = torch.compile(flex_attention, dynamic=False)
    qt, kt, vt = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    call = lambda: fn(qt, kt, vt, block_mask=bm, enable_gqa=True)  # noqa: E731
    call()
    return call


def _sdpa_causal_call(L, device):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, HQ, L, D, device=device, dtype=torch.bfloat16)
    k = torch.randn(1, HQ, L, D, device=device, dtype=torch.bfloat16)  # GQA expanded: flash takes no GQA
    v = torch.randn(1, HQ, L, D, device=device, dtype=torch.bfloat16)

    def call():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    call()
    return call


def kernel_rows(device, quick=False) -> list[dict]:
    peak = matmul_tflops(device)
    rows = [dict(op="apb_attention", what="bf16 matmul peak (8192^3, measured)", tflops=round(peak, 1))]
    have = _library.has_kernel("apb_attention")
    g = torch.Generator(device=device).manual_seed(0)
    for name, (L, A_host, P_host) in LAYOUTS.items():
        sdpa_us = time_us(lambda i, f=_sdpa_causal_call(L, device): f(), device, warmup=2, reps=5, inner=2)
        sdpa_tf = attention_flops(0, L, 0, D, HQ) / (sdpa_us * 1e6)
        rows.append(dict(op="apb_attention", layout=name, host="causal L", impl="sdpa flash (causal)",
                         time_us=round(sdpa_us, 1), tflops=round(sdpa_tf, 1), pct_peak=round(100 * sdpa_tf / peak, 1)))
        for r in ((0, 7) if quick else (0, 1, 7)):
            A, P = (0, 0) if r == 0 else (A_host, r * P_host)
            q = torch.randn(A + L, HQ, D, device=device, dtype=torch.bfloat16, generator=g)
            k = torch.randn(P + A + L, HKV, D, device=device, dtype=torch.bfloat16, generator=g)
            v = torch.randn(P + A + L, HKV, D, device=device, dtype=torch.bfloat16, generator=g)
            flops = attention_flops(A, L, P, D, HQ)
            timed = {}
            if have:
                timed["frspec mma.sync"] = lambda: apb_attention(q, k, v, A, P, impl="mma")
                if torch.cuda.get_device_capability(device) == (9, 0):
                    timed["frspec wgmma"] = lambda: apb_attention(q, k, v, A, P, impl="wgmma")
                    timed["frspec wgmma ws"] = lambda: apb_attention(q, k, v, A, P, impl="wgmma_ws")
                    timed["frspec wgmma pingpong+windows"] = lambda: apb_attention(
                        q, k, v, A, P, impl="wgmma_pingpong_windows")
                    timed["frspec wgmma pingpong"] = lambda: apb_attention(q, k, v, A, P, impl="wgmma_pingpong")
                    timed["frspec (auto = wgmma pingpong+overlap)"] = lambda: apb_attention(q, k, v, A, P)
            try:
                timed["flex"] = _flex_call(q, k, v, A, P)
            except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
                rows.append(dict(op="apb_attention", layout=name, host=r, impl="flex",
                                 note=f"failed: {type(exc).__name__}: {exc}"[:200]))
            us = {n: time_us(lambda i, f=f: f(), device, warmup=2, reps=5, inner=2) for n, f in timed.items()}
            for n, t in us.items():
                tf = flops / (t * 1e6)
                rows.append(dict(op="apb_attention", layout=name, host=r, anchor=A, passing=P, local=L, impl=n,
                                 time_us=round(t, 1), tflops=round(tf, 1), pct_peak=round(100 * tf / peak, 1),
                                 vs_flex=round(us["flex"] / t, 2) if "flex" in us else "",
                                 vs_sdpa_causal_rate=round(tf / sdpa_tf, 2)))
            del q, k, v
    return rows


def prefill_rows(device, context=131072, hosts=8) -> list[dict]:
    from ..apb.distributed import full_causal_prefill
    from ..apb.host import ApbConfig, ApbRunner, TimingComm
    from ..models.llama import LLAMA3_8B, ModelConfig, random_model

    cfg = ModelConfig(**LLAMA3_8B)
    model = random_model(cfg, seed=0, dtype=torch.bfloat16, device=device)
    ids = torch.randint(0, cfg.vocab_size, (context,), generator=torch.Generator().manual_seed(0))
    A, P = ApbConfig.PAPER_8_HOSTS.get(context, (context // hosts // 4, context // hosts // 8))
    apb_cfg = ApbConfig(hosts, anchor_len=A, passing_len=P)

    def timed(fn, reps=2):  # best of `reps` after one warm-up
        fn()
        return min(wall_seconds(fn, device) for _ in range(reps))

    rows = []
    host_s = {}
    for r in (0, hosts - 1):
        runner = ApbRunner(model, apb_cfg, comm=TimingComm(hosts), ranks=[r])
        host_s[r] = timed(lambda: runner.prefill(ids))
        rows.append(dict(op="apb_prefill", what=f"host {r} of {hosts}, {context // 1024}K context (anchor {A}, "
                         f"passing {P}/host), Llama-3-8B shape bf16", time_s=round(host_s[r], 3)))
        del runner
    torch.cuda.empty_cache()
    full = timed(lambda: full_causal_prefill(model, ids), reps=1)
    rows.append(dict(op="apb_prefill", what=f"full causal prefill of {context // 1024}K on one GPU (SDPA flash)",
                     time_s=round(full, 3)))
    rows.append(dict(op="apb_prefill", what=f"PROJECTED {hosts}-host speedup = full / slowest host "
                     "(compute only, no communication)", speedup=round(full / max(host_s.values()), 2)))
    return rows


def run(device: torch.device, quick: bool = False) -> list[dict]:
    if device.type != "cuda":
        return [dict(op="apb_attention", note="GPU benchmark: skipped on CPU")]
    rows = kernel_rows(device, quick)
    if not quick:
        rows += prefill_rows(device)
    return rows
