"""APB on torch.distributed: one host per rank (NCCL between GPUs, gloo on CPU).

    torchrun --nproc-per-node 2 -m frspec_cuda.apb.distributed --config tiny --context-len 4096

runs a prefill + greedy decode and prints one JSON line of timings from rank 0 (with
`--full-baseline`, also a full causal prefill of the same context on rank 0's GPU; with
`--ring-baseline`, a ring-attention prefill over the same ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib

import torch
import torch.nn.functional as F

from ..models.llama import LLAMA3_8B, LlamaModel, ModelConfig, random_model, rms_norm
from .host import ApbConfig, ApbResult, ApbRunner, DistributedComm

# Small shapes for tests and smoke runs (head_dim 64 so the GPU kernel applies).
TINY = dict(arch="llama", vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=64, rope_theta=10000.0, max_position_embeddings=1 << 20)
CONFIGS = {"tiny": TINY, "llama3-8b": LLAMA3_8B}
# context -> (anchor_len, passing_len): APB's 8-host settings (32K, 128K, 512K; FACTS.md), 64K in between
PAPER_SETTINGS = {32768: (1024, 512), 65536: (2048, 1024), 131072: (4096, 2048), 524288: (8192, 8192)}


def _check_same_on_all_ranks(comm: DistributedComm, fields: dict[str, int], device) -> None:
    """Every rank must run the same request: compare a few integers across ranks."""
    mine = torch.tensor(list(fields.values()), dtype=torch.long, device=device)
    allv = comm.all_gather([mine])
    for r, other in enumerate(allv):
        if not torch.equal(other, mine):
            diff = {k: (int(a), int(b)) for k, a, b in zip(fields, mine.tolist(), other.tolist()) if a != b}
            raise ValueError(f"rank {comm.rank} and rank {r} disagree on the request: {diff} (mine, theirs)")
    comm.seconds = 0.0


def distributed_generate(model: LlamaModel, context_ids: list[int], cfg: ApbConfig, max_new_tokens: int, *,
                         group=None, **kw) -> ApbResult:
    """APB prefill + decode with this rank as host `rank`. Every rank passes the same
    context, config and arguments; every rank returns the same tokens."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised (launch with torchrun, or call init_process_group)")
    comm = DistributedComm(group)
    if comm.num_hosts != cfg.num_hosts:
        raise ValueError(f"world size {comm.num_hosts} does not match ApbConfig.num_hosts {cfg.num_hosts}")
    q = list(kw.get("query_ids") or [])
    _check_same_on_all_ranks(comm, {
        "context_len": len(context_ids), "context_crc": zlib.crc32(bytes(str(context_ids), "ascii")),
        "query_len": len(q), "anchor_len": cfg.anchor_len, "passing_len": cfg.passing_len,
        "max_new_tokens": max_new_tokens, "vocab_size": model.cfg.vocab_size, "num_layers": model.cfg.num_layers},
        model.device)
    runner = ApbRunner(model, cfg, comm=comm, ranks=[comm.rank], retaining_heads=kw.pop("retaining_heads", None))
    return runner.generate(context_ids, max_new_tokens, **kw)


@torch.no_grad()
def full_causal_prefill(model: LlamaModel, ids: torch.Tensor, mlp_chunk: int = 16384) -> torch.Tensor:
    """Baseline: the whole context on one device with causal SDPA (flash), layer by layer,
    without a dense mask. Returns the last token's final-normed hidden state."""
    m, c = model, model.cfg
    T = ids.numel()
    x = F.embedding(ids.to(m.device), m.w["embed"])
    pos = torch.arange(T, device=m.device)
    for lw in m.w["layers"]:
        q, k, v = m.qkv(lw, x)
        q, k = m.rope(q, pos), m.rope(k, pos)
        G = c.num_heads // c.num_kv_heads
        attn = F.scaled_dot_product_attention(  # 4-D [1, H, T, D]: the flash kernel wants a batch dim
            q.transpose(0, 1)[None], k.repeat_interleave(G, 1).transpose(0, 1)[None],
            v.repeat_interleave(G, 1).transpose(0, 1)[None], is_causal=True)[0].transpose(0, 1)
        for s in range(0, T, mlp_chunk):  # row chunks bound the MLP's intermediate memory
            x[s:s + mlp_chunk] = m.finish_layer(lw, x[s:s + mlp_chunk], attn[s:s + mlp_chunk])
    return rms_norm(x[-1:], m.w["norm"], c.rms_norm_eps)


def _attend_block(q, k, v, causal: bool):
    """q [T, Hq, D] over one K/V block [T', Hkv, D] -> out [T, Hq, D], lse [T, Hq] fp32.
    CUDA: the flash kernel behind SDPA (it returns the LSE); CPU: PyTorch."""
    if q.is_cuda:
        G = q.shape[1] // k.shape[1]
        qt = q.transpose(0, 1)[None]
        kt = k.repeat_interleave(G, 1).transpose(0, 1)[None]
        vt = v.repeat_interleave(G, 1).transpose(0, 1)[None]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, causal)[:2]
        return out[0].transpose(0, 1).contiguous(), lse[0].transpose(0, 1).float().contiguous()
    from .attention import attention_with_lse

    return attention_with_lse(q, k, v, causal_offset=0 if causal else None)


@torch.no_grad()
def ring_prefill(model: LlamaModel, ids: torch.Tensor, group=None) -> torch.Tensor | None:
    """Ring-attention baseline: rank r holds block r of the context (equal blocks); per
    layer the K/V blocks travel rank to rank (batch_isend_irecv, overlapped with the
    attention on the block in hand) and partial results merge with
    `merge_attention_states`. Exact causal attention; no load balancing (rank r attends
    r + 1 blocks). Returns the last token's final-normed hidden on the last rank, else None."""
    import torch.distributed as dist

    from .. import ops

    m, c = model, model.cfg
    H, r = dist.get_world_size(group), dist.get_rank(group)
    n = ids.numel()
    if n % H:
        raise ValueError(f"ring prefill needs the context ({n}) to be a multiple of the world size ({H})")
    L = n // H
    nxt, prv = (r + 1) % H, (r - 1) % H
    if group is not None:
        nxt, prv = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prv)
    x = F.embedding(ids[r * L:(r + 1) * L].to(m.device), m.w["embed"])
    pos = torch.arange(r * L, (r + 1) * L, device=m.device)
    for lw in m.w["layers"]:
        q, k, v = m.qkv(lw, x)
        q, k = m.rope(q, pos), m.rope(k, pos)
        kv = torch.stack([k, v])
        out = lse = None
        for step in range(H):
            src = (r - step) % H  # whose block `kv` is
            reqs = []
            if step < H - 1:  # pass the block on while attending to it
                recv = torch.empty_like(kv)
                reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, kv, nxt, group),
                                               dist.P2POp(dist.irecv, recv, prv, group)])
            if src <= r:
                o, l_ = _attend_block(q, kv[0], kv[1], causal=src == r)
                out, lse = (o, l_) if out is None else ops.merge_attention_states(out, lse, o.to(out.dtype), l_)
            for req in reqs:  # on NCCL this orders the stream; the host does not block
                req.wait()
            if reqs:
                kv = recv
        x = m.finish_layer(lw, x, out)
    return rms_norm(x[-1:], m.w["norm"], c.rms_norm_eps) if r == H - 1 else None


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist

    ap = argparse.ArgumentParser(prog="python -m frspec_cuda.apb.distributed", description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny", help="random weights of this shape")
    ap.add_argument("--context-len", type=int, default=4096)
    ap.add_argument("--anchor", type=int, default=None, help="anchor_len (default: block / 4)")
    ap.add_argument("--passing", type=int, default=None, help="passing_len (default: block / 8)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    ap.add_argument("--full-baseline", action="store_true", help="also time a full causal prefill on rank 0")
    ap.add_argument("--ring-baseline", action="store_true", help="also time a ring-attention prefill on all ranks")
    ap.add_argument("--star-baseline", action="store_true",
                    help="also time Star Attention's prefill (APB with the same anchor and no passing blocks)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs (after one warm-up)")
    ap.add_argument("--json", default=None, help="append the result line to this file (rank 0)")
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if cuda else "fp32")]
    mcfg = ModelConfig(**CONFIGS[args.config])
    model = random_model(mcfg, seed=0, dtype=dtype, device=dev)
    n = args.context_len
    block = -(-n // world)
    # APB's per-context settings where the paper gives them, else anchor = block / 4, passing = block / 8
    A0, P0 = PAPER_SETTINGS.get(n, (block // 4, block // 8))
    cfg = ApbConfig(world, anchor_len=min(A0, block) if args.anchor is None else args.anchor,
                    passing_len=min(P0, block) if args.passing is None else args.passing)
    ids = torch.randint(0, mcfg.vocab_size, (n,), generator=torch.Generator().manual_seed(1)).tolist()
    results = []
    for it in range(args.repeats + 1):
        dist.barrier()
        res = distributed_generate(model, ids, cfg, args.new_tokens)
        if it > 0:
            results.append(res)
    best = min(results, key=lambda r: r.prefill_s)
    line = {"world": world, "backend": backend, "config": args.config, "context_len": n, "dtype": str(dtype),
            "anchor_len": cfg.anchor_len, "passing_len": cfg.passing_len, "block": block,
            "prefill_s": best.prefill_s, "prefill_comm_s": best.prefill_comm_s,
            "prefill_tok_s": n / best.prefill_s, "decode_steps": best.decode_steps,
            "decode_step_ms": 1e3 * best.decode_s / max(best.decode_steps, 1),
            "decode_comm_ms": 1e3 * best.decode_comm_s / max(best.decode_steps, 1), "tokens": best.tokens[:8]}
    del results
    if args.star_baseline:
        star_cfg = ApbConfig(world, anchor_len=cfg.anchor_len, passing_len=0)
        star = [distributed_generate(model, ids, star_cfg, 1) for _ in range(args.repeats + 1)][1:]
        line["star_prefill_s"] = min(r.prefill_s for r in star)
        line["speedup_vs_star"] = line["star_prefill_s"] / best.prefill_s
    sync = (lambda: torch.cuda.synchronize()) if cuda else (lambda: None)
    if args.ring_baseline and n % world == 0:
        times = []
        for it in range(args.repeats + 1):
            dist.barrier()
            sync()
            t0 = time.perf_counter()
            ring_prefill(model, torch.tensor(ids))
            sync()
            dist.barrier()
            if it > 0:
                times.append(time.perf_counter() - t0)
        line["ring_prefill_s"] = min(times)
        line["speedup_vs_ring"] = min(times) / best.prefill_s
    if args.full_baseline and rank == 0:
        from ..benchmarks.timing import wall_seconds

        t = torch.tensor(ids)
        full_causal_prefill(model, t)  # warm-up
        full = min(wall_seconds(lambda: full_causal_prefill(model, t), dev) for _ in range(args.repeats))
        line["full_prefill_s"] = full
        line["speedup_vs_full"] = full / best.prefill_s
    dist.barrier()
    if rank == 0:
        text = json.dumps(line)
        print(text, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(text + "\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
