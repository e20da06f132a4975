"""One Llama-family decoder (Llama 2/3/3.1/3.2 and Qwen2/2.5) shared by the engine, the
drafts and APB: plain tensors, a static KV cache of layout [layers, 2, B, max_len, Hkv, D]
with per-sequence lengths, and attention that is either causal over the cache (prefill,
decode) or a tree (verification: `frspec_cuda.tree.tree_attention`).

Semantics follow Hugging Face transformers' LlamaForCausalLM / Qwen2ForCausalLM (RMSNorm,
rotate-half RoPE with optional `llama3` scaling, GQA, SwiGLU, q/k/v bias for Qwen2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import decoder
from ..reference import decoder as decoder_ref

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "MistralForCausalLM": "llama"}


class CheckpointError(ValueError):
    """A checkpoint file or field that cannot be used; the message names it."""


@dataclass
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    @classmethod
    def from_hf(cls, cfg: dict, source: str = "config.json") -> "ModelConfig":
        archs = cfg.get("architectures") or []
        arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            mt = cfg.get("model_type")
            arch = {"llama": "llama", "qwen2": "qwen2", "mistral": "llama"}.get(mt)
        if arch is None:
            raise CheckpointError(f"{source}: unsupported architecture {archs or cfg.get('model_type')!r} "
                                  f"(supported: {sorted(SUPPORTED_ARCHITECTURES)})")

        def need(key):
            if key not in cfg:
                raise CheckpointError(f"{source}: missing field '{key}'")
            return cfg[key]

        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        kv = int(cfg.get("num_key_value_heads") or heads)
        if heads % kv:
            raise CheckpointError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
        eos = cfg.get("eos_token_id")
        eos = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        scaling = cfg.get("rope_scaling") or None
        if scaling is None and isinstance(cfg.get("rope_parameters"), dict):  # transformers >= 5 layout
            rp = cfg["rope_parameters"]
            if rp.get("rope_type", "default") != "default":
                scaling = rp
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in ("llama3", "default"):
                raise CheckpointError(f"{source}: rope_scaling type {kind!r} is not supported (llama3 is)")
            if kind == "default":
                scaling = None
        theta = cfg.get("rope_theta")
        if theta is None and isinstance(cfg.get("rope_parameters"), dict):
            theta = cfg["rope_parameters"].get("rope_theta")
        return cls(
            arch=arch, vocab_size=int(need("vocab_size")), hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")), num_layers=int(need("num_hidden_layers")),
            num_heads=heads, num_kv_heads=kv, head_dim=head_dim, rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(theta if theta is not None else 10000.0), rope_scaling=scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
            eos_token_ids=eos, bos_token_id=cfg.get("bos_token_id"),
        )


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    s = cfg.rope_scaling
    if s is not None:  # Llama 3.1 "llama3" frequency-dependent scaling
        factor, lo, hi = float(s["factor"]), float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
        old = float(s.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        mid = (wavelen <= old / lo) & (wavelen >= old / hi)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv.float()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x [..., T, H, D], positions [..., T] -> rotate-half RoPE (HF convention)."""
    return decoder_ref.rope(x, positions, inv_freq)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return decoder.rms_norm(x, weight, eps)


def fuse_layer_weights(lw: dict[str, torch.Tensor]) -> None:
    """In place: concatenate q/k/v (and their biases) into "qkv" / "qkv_bias" and gate/up
    into "gate_up", and make the separate weights views of the fused ones (no extra
    memory): one GEMM instead of three and two, fewer kernels per decode step."""
    if "qkv" not in lw:
        qkv = torch.cat([lw["q"], lw["k"], lw["v"]])
        lw["q"], lw["k"], lw["v"] = qkv.split([lw["q"].shape[0], lw["k"].shape[0], lw["v"].shape[0]])
        lw["qkv"] = qkv
        if any(k in lw for k in ("q_bias", "k_bias", "v_bias")):
            parts = [lw.get(f"{n}_bias") if f"{n}_bias" in lw else lw[n].new_zeros(lw[n].shape[0]) for n in "qkv"]
            bias = torch.cat(parts)
            lw["q_bias"], lw["k_bias"], lw["v_bias"] = bias.split([p.shape[0] for p in parts])
            lw["qkv_bias"] = bias
    if "gate_up" not in lw:
        gate_up = torch.cat([lw["gate"], lw["up"]])
        lw["gate"], lw["up"] = gate_up.split(lw["gate"].shape[0])
        lw["gate_up"] = gate_up


def layer_weight_bytes(lw: dict[str, torch.Tensor]) -> int:
    """Bytes of one decoder layer's weights (each counted once: the fused tensors are not
    added to the views of them)."""
    return sum(t.numel() * t.element_size() for k, t in lw.items() if k not in ("qkv", "qkv_bias", "gate_up"))


class LlamaModel:
    """Weights as plain tensors; `forward` runs the decoder over new tokens, writing their
    K/V into the cache at `positions`' slots (cache_len + t) and attending causally over
    [0, cache_len + T) per sequence."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor]):
        self.cfg = cfg
        self.w = weights
        for lw in weights["layers"]:
            fuse_layer_weights(lw)
        ref = weights["embed"]
        self.device, self.dtype = ref.device, ref.dtype
        self.inv_freq = rope_inv_freq(cfg).to(self.device)
        self._ar_decoder = None  # the cached AutoregressiveDecoder (spec.autoregressive.decoder_for)

    @property
    def lm_head(self) -> torch.Tensor:
        return self.w["lm_head"] if "lm_head" in self.w else self.w["embed"]

    def new_cache(self, batch: int, max_len: int) -> torch.Tensor:
        c = self.cfg
        return torch.zeros(c.num_layers, 2, batch, max_len, c.num_kv_heads, c.head_dim, dtype=self.dtype, device=self.device)

    # One decoder layer = qkv (+ RoPE) -> attention (the caller's: cache, tree, APB, ring...)
    # -> finish_layer. Shapes [..., T, hidden] with any leading dims.
    def qkv(self, lw: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input norm (skipped where the layer has none: EAGLE-1/2's first layer) and the
        q/k/v projections, before RoPE: [..., T, Hq, D], [..., T, Hkv, D] x 2."""
        c = self.cfg
        h = rms_norm(x, lw["input_norm"], c.rms_norm_eps) if "input_norm" in lw else x
        q = F.linear(h, lw["q"], lw.get("q_bias")).unflatten(-1, (c.num_heads, c.head_dim))
        k = F.linear(h, lw["k"], lw.get("k_bias")).unflatten(-1, (c.num_kv_heads, c.head_dim))
        v = F.linear(h, lw["v"], lw.get("v_bias")).unflatten(-1, (c.num_kv_heads, c.head_dim))
        return q, k, v

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, positions, self.inv_freq)

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor | None):
        """(norm(x + delta), x + delta): the pending residual add fused with the next norm
        (one kernel on the GPU); no delta: just the norm; no weight: no norm."""
        eps = self.cfg.rms_norm_eps
        if delta is None:
            return (x if weight is None else decoder.rms_norm(x, weight, eps)), x
        if weight is None:
            x = x + delta
            return x, x
        return decoder.add_rms_norm(delta, x, weight, eps)

    def norm_linear(self, x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor | None,
                    weight: torch.Tensor, bias: torch.Tensor | None = None, silu_and_mul: bool = False):
        """(linear(norm(x + delta)), x + delta), `add_norm` followed by the projection; for one
        row on the GPU a single kernel (`decoder.rms_norm_linear`). silu_and_mul: weight is
        the fused [gate; up] and the result silu(gate) * up."""
        if norm_weight is not None:
            return decoder.rms_norm_linear(x, delta, norm_weight, self.cfg.rms_norm_eps, weight, bias, silu_and_mul)
        h, x = self.add_norm(x, delta, None)
        return (decoder.linear_silu_and_mul(h, weight) if silu_and_mul else decoder.linear(h, weight, bias)), x

    def attention_out_and_mlp(self, lw: dict, x: torch.Tensor, attn: torch.Tensor):
        """Output projection of the attention result (any trailing head layout), residual,
        post-norm SwiGLU MLP. Returns (x after the attention residual, the MLP output still
        to be added: the next layer's norm adds it)."""
        c = self.cfg
        o = decoder.linear(attn.reshape(*x.shape[:-1], c.num_heads * c.head_dim), lw["o"])
        act, x = self.norm_linear(x, o, lw["post_norm"], lw["gate_up"], silu_and_mul=True)
        return x, decoder.linear(act, lw["down"])

    def finish_layer(self, lw: dict, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after attention, residuals included."""
        x, delta = self.attention_out_and_mlp(lw, x, attn)
        return x + delta

    def forward(self, input_ids: torch.Tensor, kv_cache: torch.Tensor, cache_len: torch.Tensor,
                num_layers: int | None = None, *, slots: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, visible: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, final_norm: bool = True,
                tree_mask: torch.Tensor | None = None, tree_len: int | None = None) -> torch.Tensor:
        """Run the decoder over new tokens input_ids [B, T] and return final-normed hidden
        states [B, T, hidden] (`logits()` applies the LM head).

        By default the tokens are the next T of each sequence: written at cache slots
        cache_len[b] + t, RoPE position = slot, attending causally over [0, cache_len + t].
        Drafting and tree verification pass their own `slots` [B, T] (where each token's K/V
        goes), `positions` [B, T] (RoPE) and `visible` [B, T, max_len] (which cache slots each
        token attends to, its own included). cache_len is never advanced here: the caller
        commits tokens, so drafts and rejected tree nodes are simply forgotten.
        With `tree_mask` (packed ancestor bits from `build_dynamic_tree`) the T tokens are a
        tree's nodes at slots cache_len + node and attention is `tree_attention` (the CUDA
        kernel for fp16/bf16 with head_dim 64/128, the reference otherwise): each node sees
        the whole prefix, its ancestors and itself. With `tree_len` > T they are the last T
        of a tree of tree_len nodes whose earlier ones are already cached (a drafting level;
        the mask then has ceil(tree_len / 64) words per token).
        `num_layers` runs only the first layers (self-draft). EAGLE heads pass their own
        `inputs_embeds` [B, T, hidden] and take the output without the final norm; a layer
        without an "input_norm" weight skips that norm (EAGLE-1/2's first layer)."""
        c = self.cfg
        B, T = input_ids.shape
        L_max = kv_cache.shape[3]
        dev = input_ids.device
        fresh_prefill = False  # every sequence starts at slot 0: plain causal attention, no mask
        if slots is None:
            lens = cache_len.tolist()
            if max(lens) + T > L_max:
                raise ValueError(f"{T} new tokens at cache_len {lens} do not fit the cache (max_len {L_max})")
            slots = cache_len.to(torch.long).unsqueeze(1) + torch.arange(T, device=dev)
            fresh_prefill = visible is None and tree_mask is None and max(lens) == 0 and T > 1
        if positions is None:
            positions = slots
        use_tree_kernel = False
        if tree_mask is not None:
            from .. import _library, tree as tree_ops
            from ..reference import tree as tree_ref

            use_tree_kernel = (input_ids.is_cuda and c.head_dim in (64, 128) and self.dtype in (torch.float16,
                               torch.bfloat16) and _library.has_kernel("tree_attention"))
            tree_attention = (lambda *a: tree_ops.tree_attention(*a, validate=False, tree_len=tree_len)) \
                if use_tree_kernel else (lambda *a: tree_ref.tree_attention(*a, tree_len=tree_len))
            tree_cache_len = cache_len.to(torch.int32)
        elif visible is None and not fresh_prefill:  # causal: slot j is visible to token t iff j <= its slot
            visible = torch.arange(L_max, device=dev).view(1, 1, L_max) <= slots.unsqueeze(-1)
        x = F.embedding(input_ids, self.w["embed"]) if inputs_embeds is None else inputs_embeds
        n_layers = c.num_layers if num_layers is None else num_layers
        slots, positions = slots.to(torch.long), positions.to(torch.long)
        delta = None  # the previous layer's MLP output, added by this layer's (fused) norm
        for i in range(n_layers):
            lw = self.w["layers"][i]
            qkv, x = self.norm_linear(x, delta, lw.get("input_norm"), lw["qkv"], lw.get("qkv_bias"))
            # RoPE on q and k, k and v stored at their slots: one kernel on the GPU
            q = decoder.rope_qk_store_kv(qkv, positions, self.inv_freq, slots, kv_cache[i, 0], kv_cache[i, 1],
                                         c.num_heads)
            if tree_mask is not None:
                attn = tree_attention(q, kv_cache[i, 0], kv_cache[i, 1], tree_cache_len, tree_mask)[0]
                attn = attn.reshape(B, T, c.num_heads * c.head_dim)
            elif fresh_prefill:  # SDPA's causal path (flash on the GPU): no [T, L] mask in memory
                G = c.num_heads // c.num_kv_heads
                k, v = kv_cache[i, 0, :, :T], kv_cache[i, 1, :, :T]
                kk = k.repeat_interleave(G, 2) if G > 1 else k
                vv = v.repeat_interleave(G, 2) if G > 1 else v
                attn = F.scaled_dot_product_attention(q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2),
                                                      is_causal=True).transpose(1, 2).reshape(B, T, -1)
            else:
                attn = F.scaled_dot_product_attention(
                    q.transpose(1, 2), kv_cache[i, 0].transpose(1, 2), kv_cache[i, 1].transpose(1, 2),
                    attn_mask=visible.unsqueeze(1), enable_gqa=True,
                ).transpose(1, 2).reshape(B, T, c.num_heads * c.head_dim)
            x, delta = self.attention_out_and_mlp(lw, x, attn)
        return self.add_norm(x, delta, self.w["norm"] if final_norm else None)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return decoder.linear(hidden, self.lm_head).float()


# ------------------------------------------------------------------------------ loading

# Hugging Face names of a decoder layer's weights (under "model.layers.{i}."), by our short names
LAYER_KEYS = {
    "q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight", "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight", "input_norm": "input_layernorm.weight",
    "post_norm": "post_attention_layernorm.weight",
}
BIAS_KEYS = {"q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias", "v_bias": "self_attn.v_proj.bias"}


def read_config(path: Path, what: str) -> tuple[Path, dict]:
    """`path`/config.json as a dict; errors name the file (`what`: the directory expected)."""
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{cfg_file}: not found (expected {what})")
    try:
        return cfg_file, json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file}: malformed JSON ({exc})") from exc


def read_safetensors_files(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.exists():
            raise CheckpointError(f"{f}: listed in the index but missing")
        try:
            tensors.update(load_file(str(f)))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise CheckpointError(f"{f}: cannot read safetensors ({exc})") from exc
    return tensors


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (KeyError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{index}: malformed index ({exc})") from exc
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weights (or model.safetensors.index.json) found")
    return read_safetensors_files([path / name for name in files])


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every decoder-layer weight, by our short names (biases included)."""
    H, D, Hq, Hkv, I = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    return {"q": (Hq * D, H), "k": (Hkv * D, H), "v": (Hkv * D, H), "o": (H, Hq * D), "gate": (I, H), "up": (I, H),
            "down": (H, I), "input_norm": (H,), "post_norm": (H,), "q_bias": (Hq * D,), "k_bias": (Hkv * D,),
            "v_bias": (Hkv * D,)}


def take_weight(tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], where, device, dtype, *,
                required: bool = True, says: str = "expected") -> torch.Tensor | None:
    """tensors[key] checked against `shape` and moved to device/dtype; a missing optional
    weight is None. Errors name `where` (the file or directory) and the key."""
    if key not in tensors:
        if required:
            raise CheckpointError(f"{where}: weight '{key}' is missing")
        return None
    w = tensors[key]
    if tuple(w.shape) != tuple(shape):
        raise CheckpointError(f"{where}: weight '{key}' has shape {tuple(w.shape)}, {says} {tuple(shape)}")
    return w.to(device=device, dtype=dtype)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LlamaModel:
    """A Hugging Face checkpoint directory: config.json + *.safetensors (sharded or not)."""
    path = Path(path)
    cfg_file, raw = read_config(path, "a Hugging Face checkpoint directory")
    cfg = ModelConfig.from_hf(raw, str(cfg_file))
    gen = path / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        if eos is not None:
            cfg.eos_token_ids = tuple(eos) if isinstance(eos, list) else (eos,)
    t = _read_safetensors(path)

    def take(key, shape):
        return take_weight(t, key, shape, path, device, dtype, says="config says")

    H = cfg.hidden_size
    shapes = layer_shapes(cfg)
    layers = []
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        lw = {k: take(pre + name, shapes[k]) for k, name in LAYER_KEYS.items()}
        if cfg.attention_bias:
            lw.update({k: take(pre + name, shapes[k]) for k, name in BIAS_KEYS.items()})
        layers.append(lw)
    weights = {"embed": take("model.embed_tokens.weight", (cfg.vocab_size, H)), "layers": layers,
               "norm": take("model.norm.weight", (H,))}
    if not cfg.tie_word_embeddings:
        weights["lm_head"] = take("lm_head.weight", (cfg.vocab_size, H))
    return LlamaModel(cfg, weights)


LLAMA3_8B = dict(arch="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                 num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                 max_position_embeddings=131072,
                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192})


# FR-Spec's small model: Llama-3-8B's heads (Hq 32, Hkv 8) at head_dim 64, tied embeddings.
LLAMA32_1B = dict(arch="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                  num_heads=32, num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
                  max_position_embeddings=131072, tie_word_embeddings=True,
                  rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def random_model(cfg: ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", std: float = 0.02) -> LlamaModel:
    """Random weights of the config's shapes (tests, benchmarks at real model sizes).
    Generated on `device` in `dtype` directly so an 8B model does not pass through fp32."""
    g = torch.Generator(device=device).manual_seed(seed)
    H, D, Hq, Hkv, I = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype) * std

    def norm():
        return 1.0 + torch.randn(H, generator=g, device=device, dtype=dtype) * 0.1

    layers = []
    for _ in range(cfg.num_layers):
        lw = {"q": rnd(Hq * D, H), "k": rnd(Hkv * D, H), "v": rnd(Hkv * D, H), "o": rnd(H, Hq * D),
              "gate": rnd(I, H), "up": rnd(I, H), "down": rnd(H, I), "input_norm": norm(), "post_norm": norm()}
        if cfg.attention_bias:
            lw.update(q_bias=rnd(Hq * D), k_bias=rnd(Hkv * D), v_bias=rnd(Hkv * D))
        layers.append(lw)
    weights = {"embed": rnd(cfg.vocab_size, H) * 50, "layers": layers, "norm": norm()}
    if not cfg.tie_word_embeddings:
        weights["lm_head"] = rnd(cfg.vocab_size, H)
    return LlamaModel(cfg, weights)


def generate_greedy(model: LlamaModel, prompt_ids: list[int], max_new_tokens: int,
                    stop_ids: tuple[int, ...] | None = None,
                    on_tokens: Callable[[list[int]], None] | None = None) -> list[int]:
    """Greedy autoregressive decoding (batch 1; CUDA-graph steps on the GPU): see
    `frspec_cuda.spec.autoregressive`."""
    from ..spec.autoregressive import generate_greedy as impl

    return impl(model, prompt_ids, max_new_tokens, stop_ids, on_tokens)
