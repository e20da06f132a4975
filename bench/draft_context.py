"""Drafting cost per speculative step against the context length (Llama-3-8B shape with 2
target layers -- drafting does not touch the rest -- random bf16 weights, a random EAGLE
head, an FR-32k draft head, depth 6 / top-k 10):
- `draft step`: the engine's drafting graph replayed at cache_len = prompt - 1;
- the attention that step runs (the root, then 5 levels of 10 beams over the prefix and the
  draft tree so far), timed alone as `tree_attention` (what the engine runs now) and as SDPA
  with the equivalent dense boolean mask (what it ran before tree_attention served the
  draft layer).
python bench/draft_context.py [prompt_len,...]      (CUDA; --smoke: a CPU run of the harness)"""
import sys

import torch
import torch.nn.functional as F

from frspec_cuda import tree
from frspec_cuda.benchmarks.e2e import TINY
from frspec_cuda.benchmarks.timing import graph_time_us, time_us
from frspec_cuda.models.eagle import random_eagle
from frspec_cuda.models.llama import LLAMA3_8B, ModelConfig, random_model
from frspec_cuda.reference.tree import unpack_mask
from frspec_cuda.spec import SpeculativeGenerator
from frspec_cuda.vocab import FRVocab

smoke = "--smoke" in sys.argv
args = [a for a in sys.argv[1:] if a != "--smoke"]
dev = torch.device("cpu" if smoke else "cuda")
cfg = ModelConfig(**(TINY if smoke else {**LLAMA3_8B, "num_layers": 2}))
dtype = torch.float32 if smoke else torch.bfloat16
model = random_model(cfg, seed=0, dtype=dtype, device=dev)
head = random_eagle(model, seed=1)
K = min(32768, cfg.vocab_size // 2)
gen = SpeculativeGenerator(model, vocab=FRVocab(torch.arange(K, dtype=torch.int32), f"first-{K}"), eagle=head)
lens = [int(x) for x in args[0].split(",")] if args else ([40] if smoke else [512, 4096, 16384, 32768])
k, depth = gen.topk, gen.depth
print(f"{'prompt':>7} {'draft step ms':>13} {'attention: tree_attention us':>29} {'SDPA dense mask us':>19}")
for P in lens:
    prompt = torch.randint(0, cfg.vocab_size, (P,), generator=torch.Generator().manual_seed(P)).tolist()
    gen.generate(prompt, 2, stop_ids=())  # sizes the session and captures the step's graphs
    s = gen._sess
    step_ms = float("nan") if smoke else time_us(lambda i: s.draft(), dev, warmup=2, reps=20, inner=1) / 1e3
    # The step's attention calls on the draft cache's layer: root (1 query, tree of 1), then
    # level l's k beams below the first beam of level l - 1 (a chain: any ancestry costs the same).
    kc, vc = s.d_cache[0, 0], s.d_cache[0, 1]  # [1, L, Hkv, D]
    L, base = kc.shape[1], int(s.cache_len[0]) - 1
    calls = []
    for level in range(depth):
        nq, T = (1, 1) if level == 0 else (k, 1 + level * k)
        bits = torch.zeros(nq, dtype=torch.int64)
        for r in range(nq):
            b = 1 | (1 << (1 + (level - 1) * k + r)) if level else 1
            for up in range(1, level):
                b |= 1 << (1 + (up - 1) * k)
            bits[r] = b
        q = torch.randn(1, nq, cfg.num_heads, cfg.head_dim, dtype=dtype, device=dev)
        mask = bits.view(1, nq, 1).to(dev)
        visible = torch.zeros(1, 1, nq, L, dtype=torch.bool, device=dev)
        visible[..., :base] = True
        visible[0, 0, :, base : base + T] = unpack_mask(mask, T)[0]
        calls.append((q, mask, T, visible))
    cl = torch.tensor([base], dtype=torch.int32, device=dev)

    def tree_calls(i):
        for q, mask, T, _ in calls:
            tree.tree_attention(q, kc, vc, cl, mask, tree_len=T, validate=False)

    def sdpa_calls(i):
        for q, _, _, visible in calls:
            F.scaled_dot_product_attention(q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2),
                                           attn_mask=visible, enable_gqa=True)

    if smoke:
        tree_calls(0), sdpa_calls(0)
        t_us = s_us = float("nan")
    else:
        t_us, s_us = graph_time_us(tree_calls, dev, 1), graph_time_us(sdpa_calls, dev, 1)
    print(f"{P:>7} {step_ms:>13.3f} {t_us:>29.1f} {s_us:>19.1f}", flush=True)
