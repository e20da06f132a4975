"""EAGLE-1/2 draft heads as published (Li et al.): a `config.json` (a Llama config with
typically one hidden layer) and `pytorch_model.bin` or `*.safetensors` holding

    fc.weight [H, 2H] (+ fc.bias [H])         input = fc(cat(embed(token), feature))
    layers.{i}.self_attn.{q,k,v,o}_proj.weight, layers.{i}.mlp.{gate,up,down}_proj.weight,
    layers.{i}.post_attention_layernorm.weight, layers.{i}.input_layernorm.weight (absent
    on layer 0 in EAGLE-1/2: that layer takes fc's output un-normalised)
    embed_tokens.weight (optional; the target's embedding otherwise)

The head shares the target's embedding and LM head. Its input at draft position i is the
token x_{i+1} with the target's final-normed hidden state h_i ("feature"); its output, fed
to the LM head without a final norm, predicts x_{i+2} and is the feature of its children
while drafting a tree. Keys may carry a "model." prefix.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .llama import (BIAS_KEYS, LAYER_KEYS, CheckpointError, LlamaModel, ModelConfig, layer_shapes, read_config,
                    read_safetensors_files, take_weight)

# EAGLE keeps the decoder layer's Hugging Face names; input_layernorm is absent on layer 0
_REQUIRED = {k: name for k, name in LAYER_KEYS.items() if k != "input_norm"}
_OPTIONAL = {"input_norm": LAYER_KEYS["input_norm"], **BIAS_KEYS}


class EagleDraft:
    """An EAGLE-1/2 head bound to its target (embedding, LM head, RoPE from its config)."""

    def __init__(self, cfg: ModelConfig, fc_weight: torch.Tensor, fc_bias: torch.Tensor | None,
                 layers: list[dict[str, torch.Tensor]], embed: torch.Tensor, source: str = "eagle"):
        self.cfg, self.fc_weight, self.fc_bias, self.source = cfg, fc_weight, fc_bias, source
        self.embed = embed
        # the decoder layer(s) reuse the shared Llama code; "norm" is never applied
        self.body = LlamaModel(cfg, {"embed": embed, "layers": layers, "norm": torch.ones_like(fc_weight[:, 0])})
        self.device, self.dtype = fc_weight.device, fc_weight.dtype

    def new_cache(self, batch: int, max_len: int) -> torch.Tensor:
        return self.body.new_cache(batch, max_len)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor, kv_cache: torch.Tensor, cache_len: torch.Tensor,
                **attention) -> torch.Tensor:
        """tokens [B, T], features [B, T, H] -> draft hidden states [B, T, H] (no final norm).
        `attention` takes LlamaModel.forward's slots / positions / visible."""
        x = torch.cat([F.embedding(tokens, self.embed), features.to(self.dtype)], dim=-1)
        x = F.linear(x, self.fc_weight, self.fc_bias)
        return self.body.forward(tokens, kv_cache, cache_len, inputs_embeds=x, final_norm=False, **attention)


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    st = sorted(path.glob("*.safetensors"))
    if st:
        return read_safetensors_files(st), ", ".join(f.name for f in st)
    binf = path / "pytorch_model.bin"
    if not binf.exists():
        raise CheckpointError(f"{path}: no pytorch_model.bin or *.safetensors (expected an EAGLE head)")
    try:
        tensors = torch.load(str(binf), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle / zip errors
        raise CheckpointError(f"{binf}: cannot read ({exc})") from exc
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{binf}: expected a state dict, got {type(tensors).__name__}")
    return tensors, binf.name


def load_eagle(path: str | Path, target: LlamaModel) -> EagleDraft:
    """Load an EAGLE-1/2 head directory for `target` (same dtype and device as the target)."""
    path = Path(path)
    cfg_file, raw = read_config(path, "an EAGLE head directory")
    if not raw.get("architectures") and not raw.get("model_type"):
        raw = {**raw, "model_type": "llama"}
    cfg = ModelConfig.from_hf(raw, str(cfg_file))
    t = target.cfg
    for field in ("hidden_size", "vocab_size"):
        if getattr(cfg, field) != getattr(t, field):
            raise CheckpointError(f"{cfg_file}: {field} {getattr(cfg, field)} does not match the target's "
                                  f"{getattr(t, field)}")
    tensors, fname = _read_weights(path)
    tensors = {k[len("model."):] if k.startswith("model.") else k: v for k, v in tensors.items()}
    dev, dt = target.device, target.dtype
    where = f"{path}/{fname}"

    def take(key, shape, required=True):
        return take_weight(tensors, key, shape, where, dev, dt, required=required)

    H = cfg.hidden_size
    shapes = layer_shapes(cfg)
    layers = []
    for i in range(cfg.num_layers):
        lw = {k: take(f"layers.{i}.{name}", shapes[k]) for k, name in _REQUIRED.items()}
        for k, name in _OPTIONAL.items():
            w = take(f"layers.{i}.{name}", shapes[k], required=False)
            if w is not None:
                lw[k] = w
        layers.append(lw)
    fc_w = take("fc.weight", (H, 2 * H))
    fc_b = take("fc.bias", (H,), required=False)
    embed = take("embed_tokens.weight", (cfg.vocab_size, H), required=False)
    return EagleDraft(cfg, fc_w, fc_b, layers, target.w["embed"] if embed is None else embed, source=str(path))


def random_eagle(target: LlamaModel, *, layers: int = 1, seed: int = 0, std: float = 0.02) -> EagleDraft:
    """An EAGLE-1/2 head of the target's shape with random weights (benchmarks: its cost
    per drafting step is that of a real head; its acceptance is not)."""
    from dataclasses import replace

    cfg = replace(target.cfg, num_layers=layers)
    g = torch.Generator(device=target.device).manual_seed(seed)
    H, D, Hq, Hkv, I = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=target.device, dtype=target.dtype) * std

    lws = []
    for i in range(layers):
        lw = {"q": rnd(Hq * D, H), "k": rnd(Hkv * D, H), "v": rnd(Hkv * D, H), "o": rnd(H, Hq * D),
              "gate": rnd(I, H), "up": rnd(I, H), "down": rnd(H, I), "post_norm": 1 + rnd(H)}
        if i > 0:
            lw["input_norm"] = 1 + rnd(H)
        lws.append(lw)
    return EagleDraft(cfg, rnd(H, 2 * H), rnd(H), lws, target.w["embed"], source="random")
