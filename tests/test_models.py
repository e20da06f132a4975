"""The shared Llama-family model: our greedy AR decoding equals Hugging Face transformers'
`generate` token for token on small random checkpoints written here in HF format (Llama,
Llama 3.1 rope scaling, tied embeddings, Qwen2 with q/k/v bias, sharded safetensors), and
malformed checkpoints fail with errors naming the file or field."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from frspec_cuda.models import CheckpointError, generate_greedy, load_model  # noqa: E402

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)


def write_checkpoint(tmp_path, kind="llama", seed=0, shard=False, **over):
    torch.manual_seed(seed)
    if kind == "qwen2":
        config = transformers.Qwen2Config(**{**BASE, **over})
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**{**BASE, **over})
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # HF's init is tiny: widen it so greedy paths are not all ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.eval()
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB" if shard else "5GB")
    return model


def hf_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


PROMPTS = [[(7 * i + j * 13) % 256 for j in range(3 + i % 9)] for i in range(20)]


@pytest.mark.parametrize(
    "kind,over,shard",
    [
        ("llama", {}, False),
        ("llama", dict(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=64), rope_theta=500000.0), True),
        ("llama", dict(tie_word_embeddings=True), False),
        ("qwen2", {}, False),
    ],
)
def test_ar_matches_transformers_generate(tmp_path, kind, over, shard):
    hf = write_checkpoint(tmp_path, kind, shard=shard, **over)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").exists()
    ours = load_model(tmp_path)
    for prompt in PROMPTS:
        assert generate_greedy(ours, prompt, 12, stop_ids=()) == hf_greedy(hf, prompt, 12), prompt


def test_checkpoint_errors(tmp_path):
    write_checkpoint(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="unsupported architecture"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "hidden_size"}))
    with pytest.raises(CheckpointError, match="missing field 'hidden_size'"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 100}))
    with pytest.raises(CheckpointError, match=r"mlp.gate_proj.weight' has shape \(128, 64\), config says \(100, 64\)"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for f in tmp_path.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_model(tmp_path)


def test_prompt_longer_than_cache_is_rejected(tmp_path):
    write_checkpoint(tmp_path)
    m = load_model(tmp_path)
    cache = m.new_cache(1, 4)
    with pytest.raises(ValueError, match="do not fit the cache"):
        m.forward(torch.tensor([[1, 2, 3, 4, 5]]), cache, torch.zeros(1, dtype=torch.int32))
