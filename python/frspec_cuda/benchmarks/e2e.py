"""End-to-end decoding, batch 1 and batched (`frspec bench e2e`; issue #4's benchmark).

GPU: Llama-3-8B shape with random bf16 weights, prompt 512, 256 new tokens. CPU (or
--quick): a tiny model, prompt 32, 16 new tokens -- the harness, not a measurement.
- ar: our autoregressive greedy decode, CUDA-graph steps (our GEMV with programmatic
  dependent launch; with an L2 prefetch of the weights, and cuBLAS with and without PDL,
  for comparison) and eager (tok/s over the decode
  phase: the time of N + 1 tokens minus the time of 1), HF transformers `generate` on the
  same weights (shared, not copied) and device, and the weight-read floor (weight bytes /
  copy bandwidth measured in the run).
- eagle2 (full-vocabulary head) and frspec (the first 32768 ids, an FR-32k stand-in): a
  random EAGLE-1/2 head of the target's shape. Per speculative iteration: draft / verify /
  other milliseconds (device synchronised between phases), the iteration's bytes floor
  (target weights once + depth x (draft layer + fc + LM head rows)), mean acceptance. The
  head is random, so acceptance is ~1 token per iteration: the split and the draft-cost
  ratio are the results here, not a speed-up; tok/s at the paper's acceptance lengths is
  given as a labelled projection.
- greedy agreement of eagle2 / frspec with ar (bf16): identical prompts, and for the others
  the target's top-2 logit gap where they part (near-ties expected, nothing else).
- batched (op "e2e_batch"): the agreement prompts as one batch (4 on the GPU) through ar
  and through eagle2 / frspec: aggregate tok/s of ar against batch 1, the speculative
  iteration time against batch 1's, and each sequence's greedy agreement with its own
  batch-1 ar output.
- GPU, after that: FR-Spec's small model, the Llama-3.2-1B shape (head_dim 64, tied
  embeddings), prompt 512: ar (CUDA graphs) against its weight-read floor, eagle2 against
  frspec with the first 16384 ids (FR-16k, the paper's setting for that model: 1.24x over
  EAGLE-2 on an RTX 3090), their greedy agreement with ar. No projection there: the paper
  gives no acceptance lengths for it.
"""

from __future__ import annotations


import torch

from .. import decoder
from ..models.eagle import random_eagle
from ..models.llama import (LAYER_KEYS, LLAMA3_8B, LLAMA32_1B, LlamaModel, ModelConfig, layer_weight_bytes,
                            random_model)
from ..spec import SpeculativeGenerator
from ..spec.autoregressive import AutoregressiveDecoder, divergence_gap
from ..vocab import FRVocab
from .timing import copy_bandwidth_gbs, wall_seconds

TINY = dict(arch="llama", vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=32, max_position_embeddings=4096)


def _hf_model(model: LlamaModel):
    """A transformers LlamaForCausalLM whose parameters are `model`'s tensors (no copy)."""
    import transformers

    c = model.cfg
    kw = dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
              num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
              head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
              tie_word_embeddings=c.tie_word_embeddings, rope_theta=c.rope_theta)
    if c.rope_scaling is not None:
        kw["rope_scaling"] = dict(c.rope_scaling)
    cfg = transformers.LlamaConfig(**kw)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(cfg)
    sd = {"model.embed_tokens.weight": model.w["embed"], "model.norm.weight": model.w["norm"],
          "lm_head.weight": model.lm_head}
    for i, lw in enumerate(model.w["layers"]):
        sd.update({f"model.layers.{i}.{n}": lw[k] for k, n in LAYER_KEYS.items()})
    hf.load_state_dict(sd, assign=True, strict=False)
    # non-persistent buffers (rotary frequencies) were made on the meta device: rebuild them
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=cfg).to(model.device)  # built on CPU, then moved
    return hf.eval()


def _weight_bytes(model: LlamaModel) -> int:
    """Bytes a decode step reads: every layer, the final norm and the LM head (the embedding
    contributes one row)."""
    n = sum(layer_weight_bytes(lw) for lw in model.w["layers"])
    return n + model.lm_head.numel() * model.lm_head.element_size() + model.w["norm"].numel() * 2


def run(device: torch.device, quick: bool = False) -> list[dict]:
    small = quick or device.type != "cuda"
    cfg = ModelConfig(**(TINY if small else LLAMA3_8B))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    prompt_len, new = (32, 16) if small else (512, 256)
    model = random_model(cfg, seed=0, dtype=dtype, device=device)
    prompt = torch.randint(0, cfg.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    copy_gbs = copy_bandwidth_gbs(device)
    wbytes = _weight_bytes(model)
    floor_tok_s = copy_gbs * 1e9 / wbytes
    shape = f"{'tiny' if small else 'Llama-3-8B shape'} {str(dtype).replace('torch.', '')}, prompt {prompt_len}"
    rows = [dict(op="e2e", what=f"weight-read floor ({wbytes / 1e9:.2f} GB at {copy_gbs:.0f} GB/s)",
                 tok_s=round(floor_tok_s, 1))]

    def ar_row(dec: AutoregressiveDecoder, label: str) -> float:
        tok_s = _decode_tok_s(lambda n: dec.generate(prompt, n, stop_ids=()), new, device)
        rows.append(dict(op="e2e", impl=label, what=shape, tok_s=round(tok_s, 1),
                         x_floor=round(tok_s / floor_tok_s, 3)))
        return tok_s

    max_len = prompt_len + new + 2
    ar_dec = AutoregressiveDecoder(model, max_len)  # CUDA graphs where supported; kept for the agreement runs
    graphs = ar_dec.step.enabled
    ar = ar_row(ar_dec, "ar (ours, CUDA graphs, GEMV + PDL)" if graphs else "ar (ours, eager)")
    if graphs:  # the same decoder with cuBLAS and/or without PDL, and without graphs, for comparison
        for gemv, pdl, l2, label in ((True, True, 24 << 20, "GEMV + PDL + 24 MiB L2 prefetch"),
                                     (False, True, 0, "cuBLAS GEMV + PDL"), (False, False, 0, "cuBLAS GEMV, no PDL")):
            with decoder.launch_settings(pdl=pdl, l2_prefetch_bytes=l2, gemv=gemv):
                ar_row(AutoregressiveDecoder(model, max_len), f"ar (ours, CUDA graphs, {label})")
        ar_row(AutoregressiveDecoder(model, max_len, cuda_graphs=False), "ar (ours, eager)")
    if device.type == "cuda":  # where a decode step's time goes
        rows.append(kernel_breakdown(ar_dec._decode_step, "AR decode step"))
    try:
        hf = _hf_model(model)
        ids = torch.tensor([prompt], device=device)

        def hf_gen(n):
            with torch.no_grad():
                return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False)

        hf_tok_s = _decode_tok_s(hf_gen, new, device, warmup=2)  # nothing to size; eager HF is slow
        rows.append(dict(op="e2e", impl="HF transformers generate", what=shape, tok_s=round(hf_tok_s, 1),
                         x_floor=round(hf_tok_s / floor_tok_s, 3), ours_vs_hf=round(ar / hf_tok_s, 2)))
        del hf
    except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
        rows.append(dict(op="e2e", impl="HF transformers generate", note=f"failed: {type(exc).__name__}: {exc}"[:200]))

    # greedy agreement prompts: the timed one + more, AR reference outputs
    g = torch.Generator().manual_seed(1)
    prompts = [prompt] + [torch.randint(0, cfg.vocab_size, (prompt_len,), generator=g).tolist()
                          for _ in range(1 if small else 3)]
    ar_outs = [ar_dec.generate(p, new, stop_ids=()) for p in prompts]

    K = min(32768, cfg.vocab_size // 2)
    paper_accept = {"eagle2": 3.89, "frspec": 3.63}  # FR-Spec paper, Llama-3-8B, full vs 32k vocabulary
    rows += _speculative_rows(model, shape, prompt, prompts, ar_outs, new, K, copy_gbs, device, paper_accept,
                              breakdown=device.type == "cuda")
    rows += _batch_rows(model, shape, prompts, ar_outs, new, K, ar, device, paper_accept)
    if not small:
        del ar_dec
        rows += _small_model_rows(device, copy_gbs)
    return rows


def _decode_tok_s(gen_n, new: int, device, warmup: int | None = None) -> float:
    """Decode-phase tokens/s of `gen_n(n)` (generates n tokens): the time of new + 1 tokens
    minus the time of 1, after a warm-up call (default at full length: cache sized, CUDA graph
    captured)."""
    gen_n(new + 1 if warmup is None else warmup)
    t1 = min(wall_seconds(lambda: gen_n(1), device) for _ in range(2))
    tn = wall_seconds(lambda: gen_n(new + 1), device)
    return new / (tn - t1)


def _small_model_rows(device, copy_gbs: float, config: dict = LLAMA32_1B, prompt_len: int = 512,
                      new: int = 256) -> list[dict]:
    """FR-Spec's small model (Llama-3.2-1B shape, head_dim 64): ar, eagle2 and FR-16k."""
    cfg = ModelConfig(**config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_model(cfg, seed=2, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, cfg.vocab_size, (prompt_len,), generator=g).tolist() for _ in range(4)]
    wbytes = _weight_bytes(model)
    floor_tok_s = copy_gbs * 1e9 / wbytes
    shape = f"Llama-3.2-1B shape {str(dtype).replace('torch.', '')}, prompt {prompt_len}"
    dec = AutoregressiveDecoder(model, prompt_len + new + 2)
    tok_s = _decode_tok_s(lambda n: dec.generate(prompts[0], n, stop_ids=()), new, device)
    rows = [dict(op="e2e", what=f"{shape}: weight-read floor ({wbytes / 1e9:.2f} GB at {copy_gbs:.0f} GB/s)",
                 tok_s=round(floor_tok_s, 1)),
            dict(op="e2e", impl="ar (ours, CUDA graphs, GEMV + PDL)" if dec.step.enabled else "ar (ours, eager)",
                 what=shape, tok_s=round(tok_s, 1), x_floor=round(tok_s / floor_tok_s, 3))]
    ar_outs = [dec.generate(p, new, stop_ids=()) for p in prompts]
    del dec
    K = min(16384, cfg.vocab_size // 2)
    rows += _speculative_rows(model, shape, prompts[0], prompts, ar_outs, new, K, copy_gbs, device, None,
                              breakdown=False)
    return rows + _batch_rows(model, shape, prompts, ar_outs, new, K, tok_s, device, None)


def _speculative_rows(model: LlamaModel, shape: str, prompt, prompts, ar_outs, new: int, K: int, copy_gbs: float,
                      device, paper_accept: dict | None, breakdown: bool) -> list[dict]:
    """eagle2 (full-vocabulary draft head) and frspec (its first K ids) with a random EAGLE
    head: per-iteration split and bytes floor, greedy agreement with ar, the draft-time ratio;
    tok/s projected at `paper_accept`'s acceptance lengths where given."""
    cfg = model.cfg
    wbytes = _weight_bytes(model)
    head = random_eagle(model, seed=1)
    head_layer_bytes = sum(layer_weight_bytes(lw) for lw in head.body.w["layers"])
    head_layer_bytes += head.fc_weight.numel() * head.fc_weight.element_size()
    rows, draft_ms, iter_ms = [], {}, {}
    for mode, vocab in (("eagle2", None), ("frspec", FRVocab(torch.arange(K, dtype=torch.int32), f"first-{K}"))):
        gen = SpeculativeGenerator(model, vocab=vocab, eagle=head, depth=6, topk=10, num_nodes=60)
        gen.generate(prompt, new, stop_ids=())  # warm-up at full length (session sized, graphs captured)
        out, st = gen.generate(prompt, new, stop_ids=(), timing=True)
        rows_k = cfg.vocab_size if vocab is None else K
        it_bytes = wbytes + 6 * (head_layer_bytes + rows_k * cfg.hidden_size * model.lm_head.element_size())
        it_floor_ms = it_bytes / (copy_gbs * 1e9) * 1e3
        ms = _phase_ms(st)
        total_ms = ms["iteration_ms"]
        draft_ms[mode], iter_ms[mode] = ms["draft_ms"], total_ms
        row = dict(op="e2e", impl=mode, what=f"{shape}, random EAGLE head, depth 6 / top-k 10 / 60 nodes, "
                   f"LM head rows {rows_k}, CUDA graphs {'on' if gen._sess.verify.enabled else 'off'}",
                   **{k: round(v, 2) for k, v in ms.items()}, floor_ms=round(it_floor_ms, 3),
                   x_floor=round(total_ms / it_floor_ms, 2), accept_len=round(st.mean_accept_length, 2))
        if paper_accept:
            row.update(projected_tok_s=round(paper_accept[mode] / total_ms * 1e3, 1),
                       projection=f"PROJECTION at the paper's acceptance length {paper_accept[mode]}")
        rows.append(row)
        if breakdown:
            rows.append(kernel_breakdown(lambda: gen._draft(gen._sess), f"{mode} drafting"))
            rows.append(kernel_breakdown(lambda: gen._verify(gen._sess), f"{mode} verification"))
        agree = _agreement(model, gen, mode, prompts, ar_outs, new, device)
        rows.append({**agree, "what": f"{shape}: {agree['what']}"})
    rows.append(dict(op="e2e", what=f"{shape}: frspec draft time / eagle2 draft time (goal <= 0.5)",
                     ratio=round(draft_ms["frspec"] / draft_ms["eagle2"], 3)))
    rows.append(dict(op="e2e", what=f"{shape}: frspec iteration time / eagle2 iteration time",
                     ratio=round(iter_ms["frspec"] / iter_ms["eagle2"], 3)))
    return rows


def _batch_rows(model: LlamaModel, shape: str, prompts, ar_outs, new: int, K: int, ar_tok_s: float, device,
                paper_accept: dict | None) -> list[dict]:
    """The prompts as one batch: ar's aggregate decode tok/s (batch x per-sequence tok/s)
    against batch 1; eagle2 / frspec per-iteration time (one iteration advances every
    sequence) against batch 1, the aggregate tok/s measured (random head: ~1 token per
    sequence per iteration) and projected at the paper's acceptance lengths; each
    sequence's greedy agreement with its batch-1 ar output."""
    B = len(prompts)
    what = f"{shape}, batch {B}"
    dec = AutoregressiveDecoder(model, len(prompts[0]) + new + 2, batch=B)
    per_seq = _decode_tok_s(lambda n: dec.generate_batch(prompts, n, stop_ids=()), new, device)
    rows = [dict(op="e2e_batch", impl="ar (ours, CUDA graphs)" if dec.step.enabled else "ar (ours, eager)",
                 what=what, batch=B, tok_s=round(B * per_seq, 1), per_sequence_tok_s=round(per_seq, 1),
                 vs_batch_1=round(B * per_seq / ar_tok_s, 2))]
    outs = dec.generate_batch(prompts, new, stop_ids=())
    rows.append(dict(op="e2e_batch", impl="ar", what=f"{what}: greedy agreement of each sequence with batch-1 ar "
                     f"({new} tokens)", batch=B, **_divergences(model, prompts, ar_outs, outs)))
    del dec
    head = random_eagle(model, seed=1)
    for mode, vocab in (("eagle2", None), ("frspec", FRVocab(torch.arange(K, dtype=torch.int32), f"first-{K}"))):
        gen = SpeculativeGenerator(model, vocab=vocab, eagle=head, depth=6, topk=10, num_nodes=60)
        gen.generate(prompts[0], new, stop_ids=())  # batch 1: warm-up, then timed
        _, st1 = gen.generate(prompts[0], new, stop_ids=(), timing=True)
        gen.generate_batch(prompts, new, stop_ids=())  # batch B: warm-up (session, graphs), then timed
        outs, st = gen.generate_batch(prompts, new, stop_ids=(), timing=True)
        it1, ms = _phase_ms(st1)["iteration_ms"], _phase_ms(st)
        itb = ms["iteration_ms"]
        row = dict(op="e2e_batch", impl=mode, what=f"{what}, random EAGLE head, depth 6 / top-k 10 / 60 nodes", batch=B,
                   iteration_ms=round(itb, 2), draft_ms=round(ms["draft_ms"], 2), verify_ms=round(ms["verify_ms"], 2),
                   batch_1_iteration_ms=round(it1, 2), iteration_vs_batch_1=round(itb / it1, 2),
                   accept_len=round(st.mean_accept_length, 2),
                   tok_s=round(st.emitted / (st.draft_s + st.verify_s + st.other_s), 1))
        if paper_accept:
            row.update(projected_tok_s=round(B * paper_accept[mode] / itb * 1e3, 1),
                       projection=f"PROJECTION: {B} sequences at the paper's acceptance length {paper_accept[mode]}")
        rows.append(row)
        rows.append(dict(op="e2e_batch", impl=mode, what=f"{what}: greedy agreement of each sequence with batch-1 ar "
                         f"({new} tokens)", batch=B, **_divergences(model, prompts, ar_outs, outs)))
        del gen
    return rows


def _phase_ms(st) -> dict:
    """Milliseconds per speculative step (timing=True stats): the whole iteration and its
    draft / verify / other phases."""
    n = max(st.steps, 1)
    return dict(iteration_ms=1e3 * (st.draft_s + st.verify_s + st.other_s) / n, draft_ms=1e3 * st.draft_s / n,
                verify_ms=1e3 * st.verify_s / n, other_ms=1e3 * st.other_s / n)


def _divergences(model: LlamaModel, prompts, expected, got) -> dict:
    """How many outputs equal the expected greedy outputs; where one parts, the target's
    top-2 logit gap there and whether it is a near-tie (`divergence_gap`)."""
    same, gaps, ties = 0, [], 0
    for p, e, g in zip(prompts, expected, got):
        d = divergence_gap(model, p, e, g)
        if d is None:
            same += 1
            continue
        gaps.append(round(d[1], 4))
        ties += d[1] < d[2]
    return dict(identical=same, diverged=len(prompts) - same, divergences_at_near_ties=ties, top2_gaps=gaps)


# First match wins: the draft head's kernels before attention (its merge kernel is
# fr_lm_head_merge_kernel, which a bare "merge" used to file under attention).
_KERNEL_KINDS = (("matmul", ("gemv", "gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk")),
                 ("draft head top-k", ("lm_head", "topk")),
                 ("attention", ("tree_attention", "tree_decode", "attention", "flash", "fmha")),
                 ("norm", ("rms_norm",)), ("rope+store", ("rope_qk",)), ("silu_and_mul", ("silu",)))


def kernel_kind(name: str) -> str:
    """The kind of work a CUDA kernel (by its name) does, for the step breakdowns."""
    name = name.lower()
    return next((k for k, keys in _KERNEL_KINDS if any(x in name for x in keys)), "other")


def kernel_breakdown(fn, label: str) -> dict:
    """GPU time per kind of kernel in one eager call of `fn` (torch profiler, programmatic
    dependent launch off): where a step's time goes, kernel execution only (launch gaps
    excluded)."""
    from torch.profiler import ProfilerActivity, profile

    # Without PDL: a kernel launched early would count its wait for the previous one as its own.
    torch.cuda.synchronize()
    with decoder.launch_settings(pdl=False), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    count = 0
    for e in prof.events():
        if e.device_type.name != "CUDA" or "memcpy" in e.name.lower() or "memset" in e.name.lower():
            continue
        kind = kernel_kind(e.name)
        kinds[kind] = kinds.get(kind, 0.0) + e.device_time / 1e3
        count += 1
    row = dict(op="e2e", what=f"kernel time of one {label} (eager, profiler)", kernels=count,
               kernel_ms=round(sum(kinds.values()), 3))
    row.update({f"{k}_ms": round(v, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])})
    return row


def _agreement(model: LlamaModel, gen: SpeculativeGenerator, mode: str, prompts, ar_outs, new: int, device) -> dict:
    """Greedy speculative output vs our AR output per prompt: identical, or where they part,
    the AR logits' top-2 gap at that token and whether it is a near-tie (`divergence_gap`)."""
    outs = [gen.generate(p, new, stop_ids=())[0] for p in prompts]
    return dict(op="e2e", impl=mode, what=f"greedy agreement with ar over {len(prompts)} prompts x {new} tokens",
                **_divergences(model, prompts, ar_outs, outs))
