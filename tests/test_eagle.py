"""EAGLE-1/2 draft heads in their published format (config.json + pytorch_model.bin or
safetensors: fc + one decoder layer without input norm, sharing the target's embedding and
LM head): speculative greedy output equals our greedy AR on 20 prompts with full and FR
vocabularies, and malformed heads fail with errors naming the file or field."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from frspec_cuda.models import CheckpointError, generate_greedy, load_model  # noqa: E402
from frspec_cuda.models.eagle import load_eagle  # noqa: E402
from frspec_cuda.spec import SpeculativeGenerator  # noqa: E402
from frspec_cuda.vocab import FRVocab  # noqa: E402
from test_models import BASE, PROMPTS, write_checkpoint  # noqa: E402


def write_eagle(path, fmt="bin", seed=0, layers=1, drop=None, bad_shape=None, prefix="", fc_bias=True, **over):
    """An EAGLE head for BASE's target shape, random weights, in the published layout."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = {**BASE, "num_hidden_layers": layers, "architectures": ["LlamaForCausalLM"], **over}
    (path / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(seed)
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    D = H // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * D
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.15  # noqa: E731
    t = {"fc.weight": rnd(H, 2 * H)}
    if fc_bias:
        t["fc.bias"] = rnd(H)
    for i in range(layers):
        p = f"layers.{i}."
        t.update({p + "self_attn.q_proj.weight": rnd(H, H), p + "self_attn.k_proj.weight": rnd(kv, H),
                  p + "self_attn.v_proj.weight": rnd(kv, H), p + "self_attn.o_proj.weight": rnd(H, H),
                  p + "mlp.gate_proj.weight": rnd(I, H), p + "mlp.up_proj.weight": rnd(I, H),
                  p + "mlp.down_proj.weight": rnd(H, I), p + "post_attention_layernorm.weight": 1 + rnd(H)})
        if i > 0:
            t[p + "input_layernorm.weight"] = 1 + rnd(H)
    if drop:
        del t[drop]
    if bad_shape:
        t[bad_shape] = torch.zeros(3, 3)
    t = {prefix + k: v for k, v in t.items()}
    if fmt == "bin":
        torch.save(t, path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(t, str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    d = tmp_path_factory.mktemp("target")
    write_checkpoint(d, "llama", num_hidden_layers=2)
    return load_model(d)


@pytest.mark.parametrize("fmt,layers,vocab_size,prefix", [("bin", 1, None, ""), ("safetensors", 1, 160, "model."),
                                                          ("bin", 2, None, "")])
def test_eagle_spec_greedy_equals_ar(tmp_path, target, fmt, layers, vocab_size, prefix):
    write_eagle(tmp_path / "eagle", fmt, layers=layers, prefix=prefix, fc_bias=fmt == "bin")
    head = load_eagle(tmp_path / "eagle", target)
    vocab = None
    if vocab_size is not None:
        g = torch.Generator().manual_seed(vocab_size)
        vocab = FRVocab(torch.randperm(256, generator=g)[:vocab_size].to(torch.int32), f"random-{vocab_size}")
    gen = SpeculativeGenerator(target, vocab=vocab, eagle=head, depth=5, topk=8, num_nodes=40)
    steps = emitted = 0
    for prompt in PROMPTS[1:] + [[5, 9]]:  # 20 prompts (PROMPTS[0] has 3 tokens too; a 2-token edge case added)
        got, stats = gen.generate(prompt, 16, stop_ids=())
        assert got == generate_greedy(target, prompt, 16, stop_ids=()), prompt
        steps += stats.steps
        emitted += stats.emitted
    assert steps < emitted, "no draft token was ever accepted: the accept / re-feed path did not run"


def write_copying_eagle(path, target):
    """An EAGLE head whose layer is the target's layer 0 and whose fc passes the embedding
    through: it drafts like a 1-layer self-draft (drafts get accepted)."""
    write_eagle(path, "bin")
    sd = torch.load(path / "pytorch_model.bin")
    H = BASE["hidden_size"]
    sd["fc.weight"] = torch.cat([torch.eye(H), torch.zeros(H, H)], 1)
    sd["fc.bias"] = torch.zeros(H)
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    lw = target.w["layers"][0]
    for k, n in names.items():
        sd[f"layers.0.{n}.weight"] = lw[k]
    sd["layers.0.post_attention_layernorm.weight"] = lw["post_norm"]
    sd["layers.0.input_layernorm.weight"] = lw["input_norm"]
    torch.save(sd, path / "pytorch_model.bin")


def test_eagle_head_drafts_better_than_chance_when_it_copies_the_target(tmp_path, target):
    """A head copying the target's first layer drafts like a 1-layer self-draft would:
    acceptance well above random drafts."""
    write_copying_eagle(tmp_path / "e", target)
    gen = SpeculativeGenerator(target, eagle=load_eagle(tmp_path / "e", target), depth=5, topk=8, num_nodes=40)
    stats = [gen.generate(p, 16, stop_ids=())[1] for p in PROMPTS[:8]]
    assert sum(s.emitted for s in stats) / sum(s.steps for s in stats) > 1.0


def test_eagle_load_errors(tmp_path, target):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_eagle(tmp_path / "none", target)
    write_eagle(tmp_path / "a", hidden_size=32, intermediate_size=64)
    with pytest.raises(CheckpointError, match="hidden_size 32 does not match the target's 64"):
        load_eagle(tmp_path / "a", target)
    write_eagle(tmp_path / "b", vocab_size=300)
    with pytest.raises(CheckpointError, match="vocab_size 300 does not match"):
        load_eagle(tmp_path / "b", target)
    write_eagle(tmp_path / "c", drop="fc.weight")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: weight 'fc.weight' is missing"):
        load_eagle(tmp_path / "c", target)
    write_eagle(tmp_path / "d", "safetensors", bad_shape="layers.0.mlp.up_proj.weight")
    with pytest.raises(CheckpointError, match=r"'layers.0.mlp.up_proj.weight' has shape \(3, 3\), expected \(128, 64\)"):
        load_eagle(tmp_path / "d", target)
    write_eagle(tmp_path / "e")
    (tmp_path / "e" / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no pytorch_model.bin or"):
        load_eagle(tmp_path / "e", target)
    (tmp_path / "e" / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_eagle(tmp_path / "e", target)
    (tmp_path / "e" / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        load_eagle(tmp_path / "e", target)
    write_eagle(tmp_path / "f")
    gen = SpeculativeGenerator(target, eagle=load_eagle(tmp_path / "f", target))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        gen.generate([7], 4)


def test_qwen2_target_with_eagle_head_equals_ar(tmp_path):
    """A Qwen2 target (q/k/v bias) with an EAGLE head whose layer has q/k/v biases too."""
    write_checkpoint(tmp_path / "qwen", "qwen2", num_hidden_layers=2)
    target = load_model(tmp_path / "qwen")
    write_eagle(tmp_path / "eagle", "safetensors")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "eagle" / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    H = BASE["hidden_size"]
    kv = BASE["num_key_value_heads"] * H // BASE["num_attention_heads"]
    for name, n in (("q", H), ("k", kv), ("v", kv)):
        sd[f"layers.0.self_attn.{name}_proj.bias"] = torch.randn(n, generator=g) * 0.1
    save_file(sd, str(tmp_path / "eagle" / "model.safetensors"))
    head = load_eagle(tmp_path / "eagle", target)
    assert "q_bias" in head.body.w["layers"][0]
    gen = SpeculativeGenerator(target, eagle=head, depth=4, topk=6, num_nodes=24)
    for prompt in PROMPTS[1:]:
        assert gen.generate(prompt, 12, stop_ids=())[0] == generate_greedy(target, prompt, 12, stop_ids=()), prompt


def test_eagle_sampling_matches_the_target_distribution(tmp_path):
    """Lossless sampling with an EAGLE head: 2000 two-token samples; the first token follows
    the target's processed distribution (chi-square at p-value 1e-6; the same statistic
    rejects a sharper distribution, so it has power)."""
    from test_tree import chi2_threshold

    from frspec_cuda import spec

    over = dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    write_checkpoint(tmp_path / "t", "llama", num_hidden_layers=2, **over)
    target = load_model(tmp_path / "t")
    write_eagle(tmp_path / "e", **over)
    gen = SpeculativeGenerator(target, eagle=load_eagle(tmp_path / "e", target), depth=3, topk=3, num_nodes=8)
    prompt, T = [3, 1, 4, 1, 5], 0.9
    g = torch.Generator().manual_seed(0)
    firsts = torch.tensor([gen.generate(prompt, 2, stop_ids=(), temperature=T, generator=g)[0][0] for _ in range(2000)])
    cache = target.new_cache(1, len(prompt))
    logits = target.logits(target.forward(torch.tensor([prompt]), cache, torch.zeros(1, dtype=torch.int32))[:, -1])[0]
    p = spec.target_probs(logits, T)

    def chi2(counts):
        e = p.double() * counts.sum()
        return float(((counts.double() - e) ** 2 / e).sum())

    df = 15
    assert chi2(torch.bincount(firsts, minlength=16)) < chi2_threshold(df)
    wrong = torch.multinomial(spec.target_probs(logits, T / 2), 2000, replacement=True,
                              generator=torch.Generator().manual_seed(1))
    assert chi2(torch.bincount(wrong, minlength=16)) > chi2_threshold(df)


def test_top_level_api():
    import frspec_cuda

    assert frspec_cuda.SpeculativeGenerator is SpeculativeGenerator
    assert frspec_cuda.load_eagle is load_eagle and frspec_cuda.load_model is load_model
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        frspec_cuda.nope  # noqa: B018
