"""APB prefill + Star decode: with no anchor and no compression it is exact (equals the
model's own causal run); with compression it really changes the result; the distributed
run on gloo (world 2 and 4, processes launched here) equals the single-process simulation;
bad configurations and mismatched ranks fail with clear errors."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from frspec_cuda.apb import ApbConfig, RetainingHeads, embed_query, plan_layout, simulate
from frspec_cuda.apb.distributed import TINY
from frspec_cuda.models.llama import ModelConfig, generate_greedy, random_model
from conftest import requires_kernel

SMALL = dict(TINY, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)


def small_model(seed=0, **over):
    return random_model(ModelConfig(**dict(SMALL, **over)), seed=seed)


def ids_of(n, seed=0, vocab=512):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def full_logits(model, ids):
    cache = model.new_cache(1, len(ids))
    hidden = model.forward(torch.tensor([ids]), cache, torch.zeros(1, dtype=torch.int32))
    return model.logits(hidden[:, -1])[0]


@pytest.mark.parametrize("hosts,n", [(1, 50), (2, 64), (3, 101), (4, 97), (5, 41)])
def test_uncompressed_apb_is_exact(hosts, n):
    model = small_model()
    ids = ids_of(n)
    block = math.ceil(n / hosts)
    res = simulate(model, ids, ApbConfig(hosts, anchor_len=0, passing_len=block if hosts > 1 else 0), 10,
                   stop_ids=())
    assert res.tokens == generate_greedy(model, ids, 10, stop_ids=())
    torch.testing.assert_close(res.first_logits, full_logits(model, ids), rtol=1e-4, atol=1e-4)


def test_query_after_context_is_exact():
    model = small_model(seed=1, attention_bias=True, arch="qwen2")
    ids = ids_of(90, seed=1)
    res = simulate(model, ids[:80], ApbConfig(3, 0, 27), 6, query_ids=ids[80:], stop_ids=())
    assert res.tokens == generate_greedy(model, ids, 6, stop_ids=())
    torch.testing.assert_close(res.first_logits, full_logits(model, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compressor", ["query", "retaining"])
def test_compression_changes_the_result_and_anchor_matters(compressor):
    model = small_model(seed=2)
    ids = ids_of(120, seed=2)
    heads = RetainingHeads.random(2, 4, 2, 16, hidden=32, seed=0) if compressor == "retaining" else None
    exact = full_logits(model, ids)
    comp = simulate(model, ids, ApbConfig(4, anchor_len=0, passing_len=4, compressor=compressor), 1,
                    retaining_heads=heads)
    anch = simulate(model, ids, ApbConfig(4, anchor_len=12, passing_len=4, compressor=compressor), 1,
                    retaining_heads=heads)
    d_comp = (comp.first_logits - exact).abs().max().item()
    d_anch = (anch.first_logits - comp.first_logits).abs().max().item()
    assert d_comp > 1e-3 and d_anch > 1e-3, (d_comp, d_anch)


def test_embed_query_and_query_span():
    ctx, q = list(range(100, 140)), [1, 2, 3]
    ids, span = embed_query(ctx, q, after=16)
    assert ids[16:19] == q and span == (16, 19) and ids[:16] == ctx[:16] and ids[19:] == ctx[16:]
    model = small_model()
    res = simulate(model, ids, ApbConfig(2, anchor_len=20, passing_len=5), 2, query_span=span)
    assert len(res.tokens) == 2


@pytest.mark.parametrize("n,cfg,msg", [
    (40, ApbConfig(4, anchor_len=11), "shorter than anchor_len 11"),
    (40, ApbConfig(4, passing_len=11), "passing_len 11 is longer than a block"),
    (3, ApbConfig(4), "cannot be split over 4 hosts"),
    (40, ApbConfig(0), "num_hosts must be >= 1"),
    (40, ApbConfig(2, compressor="random"), "compressor must be one of"),
    (40, ApbConfig(2, anchor_len=-1), ">= 0"),
])
def test_bad_configurations(n, cfg, msg):
    with pytest.raises(ValueError, match=msg):
        plan_layout(n, cfg)


def test_bad_runner_arguments():
    model = small_model()
    with pytest.raises(ValueError, match="query_span"):
        simulate(model, ids_of(40), ApbConfig(2, anchor_len=4), 1, query_span=(2, 9))
    with pytest.raises(ValueError, match="needs RetainingHeads"):
        simulate(model, ids_of(40), ApbConfig(2, compressor="retaining"), 1)
    with pytest.raises(ValueError, match="retaining heads have 1 layers"):
        simulate(model, ids_of(40), ApbConfig(2, compressor="retaining"), 1,
                 retaining_heads=RetainingHeads.random(1, 4, 2, 16, hidden=8))


# ------------------------------------------------------------------------ distributed

def _worker(rank, world, init_file, out_dir, case):
    import torch.distributed as dist

    from frspec_cuda.apb.distributed import distributed_generate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        c = json.loads(case)
        model = small_model(seed=c["seed"])
        ids = ids_of(c["n"], seed=c["seed"])
        if c.get("mismatch") and rank == world - 1:
            ids = ids[:-1]
        heads = RetainingHeads.random(2, 4, 2, 16, hidden=32, seed=1) if c["compressor"] == "retaining" else None
        cfg = ApbConfig(c["hosts"], c["anchor"], c["passing"], compressor=c["compressor"])
        try:
            res = distributed_generate(model, ids, cfg, c["new"], query_ids=c.get("query"), stop_ids=(),
                                       retaining_heads=heads)
            out = {"tokens": res.tokens, "logits": res.first_logits.tolist()}
        except ValueError as exc:
            out = {"error": str(exc)}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


def run_distributed(tmp_path, world, case):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path), json.dumps(case)), nprocs=world, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("world,compressor", [(2, "query"), (4, "retaining"), (4, "query")])
def test_distributed_equals_simulation(tmp_path, world, compressor):
    case = dict(seed=3, n=150, hosts=world, anchor=16, passing=6, compressor=compressor, new=6, query=[5, 6, 7])
    results = run_distributed(tmp_path, world, case)
    model = small_model(seed=3)
    heads = RetainingHeads.random(2, 4, 2, 16, hidden=32, seed=1) if compressor == "retaining" else None
    sim = simulate(model, ids_of(150, seed=3), ApbConfig(world, 16, 6, compressor=compressor), 6,
                   query_ids=[5, 6, 7], stop_ids=(), retaining_heads=heads)
    for r, res in enumerate(results):
        assert "error" not in res, res
        assert res["tokens"] == sim.tokens, (r, res["tokens"], sim.tokens)
        torch.testing.assert_close(torch.tensor(res["logits"]), sim.first_logits, rtol=1e-5, atol=1e-5)


def test_distributed_rejects_mismatched_ranks_and_world_size(tmp_path):
    case = dict(seed=4, n=64, hosts=2, anchor=8, passing=4, compressor="query", new=2, mismatch=True)
    results = run_distributed(tmp_path, 2, case)
    assert all("disagree on the request" in r.get("error", "") for r in results), results
    case = dict(seed=4, n=64, hosts=3, anchor=8, passing=4, compressor="query", new=2)
    results = run_distributed(tmp_path / "w", 2, case) if (tmp_path / "w").mkdir() is None else None
    assert all("world size 2 does not match" in r.get("error", "") for r in results), results


# ------------------------------------------------------------------------------- GPU

@requires_kernel("apb_attention")
def test_gpu_simulation_tracks_the_full_model():
    """bf16 on the GPU (kernel path, head_dim 64): uncompressed APB vs the model's own run."""
    cfg = ModelConfig(**TINY)
    model = random_model(cfg, seed=5, dtype=torch.bfloat16, device="cuda")
    ids = ids_of(1000, seed=5)
    res = simulate(model, ids, ApbConfig(4, 0, 250), 1)
    cache = model.new_cache(1, 1000)
    exact = model.logits(model.forward(torch.tensor([ids], device="cuda"), cache,
                                       torch.zeros(1, dtype=torch.int32, device="cuda"))[:, -1])[0].cpu()
    cos = torch.nn.functional.cosine_similarity(res.first_logits, exact, dim=0).item()
    assert cos > 0.999, cos


def _ring_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from frspec_cuda.apb.distributed import ring_prefill

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = small_model(seed=6)
        hidden = ring_prefill(model, torch.tensor(ids_of(96, seed=6)))
        if hidden is not None:
            torch.save(model.logits(hidden)[0], os.path.join(out_dir, "ring.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [3])
def test_ring_attention_baseline_is_exact(tmp_path, world):
    mp.spawn(_ring_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    model = small_model(seed=6)
    torch.testing.assert_close(torch.load(tmp_path / "ring.pt"), full_logits(model, ids_of(96, seed=6)),
                               rtol=1e-4, atol=1e-4)


def test_torchrun_driver_reports_all_baselines(tmp_path):
    """`torchrun -m frspec_cuda.apb.distributed` (gloo, 2 ranks, tiny random model): one JSON
    line with APB, full, ring and Star timings; the same tokens as the simulation."""
    import subprocess
    import sys

    out = tmp_path / "r.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # gloo on CPU: any box has 2 "hosts"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "frspec_cuda.apb.distributed", "--config", "tiny", "--context-len", "600", "--new-tokens", "3",
           "--repeats", "1", "--full-baseline", "--ring-baseline", "--star-baseline", "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    for key in ("prefill_s", "prefill_comm_s", "decode_step_ms", "full_prefill_s", "ring_prefill_s",
                "star_prefill_s", "speedup_vs_full", "speedup_vs_ring", "speedup_vs_star"):
        assert line[key] > 0, key
    assert (line["world"], line["anchor_len"], line["passing_len"]) == (2, 75, 37)
    from frspec_cuda.apb.distributed import TINY

    model = random_model(ModelConfig(**TINY), seed=0)
    ids = torch.randint(0, 512, (600,), generator=torch.Generator().manual_seed(1)).tolist()
    assert simulate(model, ids, ApbConfig(2, 75, 37), 3).tokens == line["tokens"]


def test_full_causal_prefill_baseline_is_exact():
    from frspec_cuda.apb.distributed import full_causal_prefill

    model = small_model(seed=7)
    ids = ids_of(70, seed=7)
    hidden = full_causal_prefill(model, torch.tensor(ids), mlp_chunk=32)  # chunks that do not divide 70
    torch.testing.assert_close(model.logits(hidden)[0], full_logits(model, ids), rtol=1e-4, atol=1e-4)
