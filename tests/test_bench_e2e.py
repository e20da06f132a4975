"""The end-to-end benchmark harness: the HF transformers baseline built on our tensors (no
copy) decodes exactly like our model, and `frspec bench e2e` runs on CPU (tiny model)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from frspec_cuda.benchmarks import e2e  # noqa: E402
from frspec_cuda.models.llama import ModelConfig, generate_greedy, random_model  # noqa: E402


@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}])
def test_hf_baseline_shares_our_weights_and_decodes_the_same(scaling):
    cfg = ModelConfig(**dict(e2e.TINY, rope_scaling=scaling, rope_theta=500000.0 if scaling else 10000.0))
    model = random_model(cfg, seed=3, std=0.15)
    hf = e2e._hf_model(model)
    assert hf.model.layers[0].self_attn.q_proj.weight.data_ptr() == model.w["layers"][0]["q"].data_ptr()
    prompt = torch.randint(0, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                          do_sample=False)
    assert out[0, 40:].tolist() == generate_greedy(model, prompt, 12, stop_ids=())


def test_e2e_suite_runs_on_cpu():
    rows = e2e.run(torch.device("cpu"), quick=True)
    impls = {r.get("impl") for r in rows}
    assert {"ar (ours, eager)", "HF transformers generate", "eagle2", "frspec"} <= impls, rows
    spec_rows = [r for r in rows if r.get("impl") in ("eagle2", "frspec") and "iteration_ms" in r and r["op"] == "e2e"]
    assert len(spec_rows) == 2
    agreement = [r for r in rows if "identical" in r and r["op"] == "e2e"]
    assert len(agreement) == 2 and all(r["diverged"] == 0 for r in agreement), agreement  # fp32: exact
    for r in spec_rows:
        assert r["iteration_ms"] > 0 and r["draft_ms"] > 0 and r["verify_ms"] > 0 and r["accept_len"] >= 1
    assert not any("failed" in str(r.get("note", "")) for r in rows), rows
    batch = [r for r in rows if r["op"] == "e2e_batch"]  # the agreement prompts as one batch of 2
    assert {r["impl"] for r in batch} == {"ar (ours, eager)", "ar", "eagle2", "frspec"}, batch
    assert all(r["identical"] == 2 for r in batch if "identical" in r), batch  # fp32: exact
    assert all(r["iteration_ms"] > 0 and r["tok_s"] > 0 for r in batch if "iteration_ms" in r)


def test_small_model_pass_runs_on_cpu():
    """The second model's pass (Llama-3.2-1B shape on the GPU) with a tiny tied-embedding model:
    ar against its floor, eagle2 and frspec iterations, their agreement with ar (fp32: exact)."""
    cfg = dict(e2e.TINY, tie_word_embeddings=True)
    rows = e2e._small_model_rows(torch.device("cpu"), 10.0, cfg, prompt_len=16, new=8)
    assert all(r["what"].startswith("Llama-3.2-1B shape float32") for r in rows), rows
    assert {r.get("impl") for r in rows} >= {"ar (ours, eager)", "eagle2", "frspec"}
    agreement = [r for r in rows if "identical" in r]
    assert len(agreement) == 5 and all(r["identical"] == 4 for r in agreement), agreement  # 2 + batch: ar, 2 spec
    assert len([r for r in rows if "iteration_ms" in r and "projected_tok_s" not in r]) == 4  # batch 1 and 4
    assert len([r for r in rows if "ratio" in r]) == 2
    assert {r["batch"] for r in rows if r["op"] == "e2e_batch"} == {4}


def test_kernel_kinds():
    """The step breakdowns file each of our kernels under the work it does."""
    kind = e2e.kernel_kind
    assert kind("void frspec::fr_lm_head_merge_kernel(...)") == "draft head top-k"  # not attention
    assert kind("void frspec::fr_lm_head_partial_kernel<__nv_bfloat16, 4>(...)") == "draft head top-k"
    assert kind("void frspec::tree_attention_merge_kernel<__nv_bfloat16>(...)") == "attention"
    assert kind("void frspec::tree_attention_ws_kernel<__nv_bfloat16, 2, true, 176>(...)") == "attention"
    assert kind("void frspec::merge_attention_states_kernel<float>(...)") == "attention"
    assert kind("void frspec::gemv_kernel<__nv_bfloat16>(...)") == "matmul"
    assert kind("void frspec::rope_qk_store_kv_kernel(...)") == "rope+store"
    assert kind("elementwise_kernel") == "other"
