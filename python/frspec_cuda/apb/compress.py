"""The APB compressor: score every token of a host's block per KV head and keep the top
`passing_len` keys/values (after RoPE, so they keep their global positions) to pass on.

Two scorers:
- `RetainingHeads` (Locret's trained scorer, what APB uses): per layer, fc1 over
  cat(q, k, v) before RoPE -> hidden (1024) -> activation -> fc2 -> one score per KV head,
  max-pooled over 5 neighbouring positions.
- `query_aware_scores` (training-free default): the attention of the anchor's query rows
  to the block's keys, summed over those rows and the query heads of each KV head, pooled
  the same way. APB embeds the query in the anchor, so the block keeps what the query
  looks at.
Selection and gather are plain tensor ops and run wherever the tensors live.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

POOL_KERNEL = 5


def pool_scores(scores: torch.Tensor, kernel: int = POOL_KERNEL) -> torch.Tensor:
    """Max-pool [L, Hkv] scores over `kernel` neighbouring positions (same length)."""
    if kernel <= 1:
        return scores
    x = scores.T.unsqueeze(0)  # [1, Hkv, L]
    return F.max_pool1d(x, kernel, stride=1, padding=kernel // 2, ceil_mode=False)[0, :, : scores.shape[0]].T


def query_aware_scores(q_obs: torch.Tensor, k: torch.Tensor, scale: float | None = None,
                       kernel: int = POOL_KERNEL) -> torch.Tensor:
    """q_obs [n, Hq, D] (the observing queries, after RoPE), k [L, Hkv, D] (after RoPE) ->
    [L, Hkv] fp32: softmax attention mass each key receives, summed over the n queries and
    the Hq / Hkv query heads that share its KV head, then max-pooled."""
    n, Hq, D = q_obs.shape
    L, Hkv = k.shape[0], k.shape[1]
    if n == 0:
        raise ValueError("query-aware scoring needs at least one observing query row")
    scale = D ** -0.5 if scale is None else scale
    G = Hq // Hkv
    s = torch.einsum("nhd,lhd->hnl", q_obs.float(), k.float().repeat_interleave(G, 1)) * scale
    mass = torch.softmax(s, dim=-1).sum(1)  # [Hq, L]
    return pool_scores(mass.view(Hkv, G, L).sum(1).T.contiguous(), kernel)


class RetainingHeads:
    """Locret-style retaining heads for every layer: scores(layer, q, k, v) -> [L, Hkv].

    Weights per layer i: fc1.weight [R, (Hq + 2 Hkv) * D], fc1.bias [R], fc2.weight
    [Hkv, R], fc2.bias [Hkv]. `load` reads them from a safetensors or PyTorch file whose
    keys end in `layers.{i}.<anything>fc1.weight` etc."""

    ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}

    def __init__(self, layers: list[dict[str, torch.Tensor]], activation: str = "silu", kernel: int = POOL_KERNEL):
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(self.ACTIVATIONS)}, got {activation!r}")
        self.layers, self.act, self.kernel = layers, self.ACTIVATIONS[activation], kernel

    @classmethod
    def random(cls, num_layers: int, q_heads: int, kv_heads: int, head_dim: int, hidden: int = 1024, *,
               seed: int = 0, dtype=torch.float32, device="cpu") -> "RetainingHeads":
        g = torch.Generator().manual_seed(seed)
        d_in = (q_heads + 2 * kv_heads) * head_dim
        mk = lambda *s: (torch.randn(*s, generator=g) / s[-1] ** 0.5).to(device=device, dtype=dtype)  # noqa: E731
        return cls([{"fc1.weight": mk(hidden, d_in), "fc1.bias": mk(hidden, 1)[:, 0].contiguous(),
                     "fc2.weight": mk(kv_heads, hidden), "fc2.bias": mk(kv_heads, 1)[:, 0].contiguous()}
                    for _ in range(num_layers)])

    @classmethod
    def load(cls, path: str | Path, num_layers: int, q_heads: int, kv_heads: int, head_dim: int, *,
             activation: str = "silu", dtype=torch.float32, device="cpu") -> "RetainingHeads":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: retaining-head weights not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(raw, dict):
                raise ValueError(f"{path}: expected a dict of tensors, got {type(raw).__name__}")
        pat = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.*\.)?(fc[12])\.(weight|bias)$")
        layers: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]
        for key, t in raw.items():
            m = pat.search(key)
            if not m:
                continue
            i = int(m.group(1))
            if i >= num_layers:
                raise ValueError(f"{path}: '{key}' is for layer {i}, the model has {num_layers}")
            layers[i][f"{m.group(2)}.{m.group(3)}"] = t
        d_in = (q_heads + 2 * kv_heads) * head_dim
        for i, lw in enumerate(layers):
            for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
                if name not in lw:
                    raise ValueError(f"{path}: layer {i} has no '{name}'")
            R = lw["fc1.weight"].shape[0]
            want = {"fc1.weight": (R, d_in), "fc1.bias": (R,), "fc2.weight": (kv_heads, R), "fc2.bias": (kv_heads,)}
            for name, shape in want.items():
                if tuple(lw[name].shape) != shape:
                    raise ValueError(f"{path}: layer {i} '{name}' has shape {tuple(lw[name].shape)}, expected {shape} "
                                     f"(q_heads {q_heads}, kv_heads {kv_heads}, head_dim {head_dim})")
            layers[i] = {k: t.to(device=device, dtype=dtype) for k, t in lw.items()}
        return cls(layers, activation)

    def to(self, device=None, dtype=None) -> "RetainingHeads":
        self.layers = [{k: t.to(device=device, dtype=dtype) for k, t in lw.items()} for lw in self.layers]
        return self

    def scores(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [L, Hq, D], k, v [L, Hkv, D], all before RoPE -> [L, Hkv] fp32 pooled scores."""
        lw = self.layers[layer]
        x = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1).to(lw["fc1.weight"].dtype)
        h = self.act(F.linear(x, lw["fc1.weight"], lw["fc1.bias"]))
        return pool_scores(F.linear(h, lw["fc2.weight"], lw["fc2.bias"]).float(), self.kernel)


def select_passing(k: torch.Tensor, v: torch.Tensor, scores: torch.Tensor, passing_len: int):
    """Keep the `passing_len` best-scored tokens of each KV head, in position order.
    k, v [L, Hkv, D]; scores [L, Hkv]. Returns pk, pv [passing_len, Hkv, D] and the kept
    indices [passing_len, Hkv]."""
    L = k.shape[0]
    if not 0 <= passing_len <= L:
        raise ValueError(f"passing_len {passing_len} must lie in [0, block length {L}]")
    if passing_len == L:
        idx = torch.arange(L, device=k.device).unsqueeze(1).expand(L, k.shape[1])
    else:
        idx = scores.topk(passing_len, dim=0).indices.sort(dim=0).values
    g = idx.unsqueeze(-1).expand(passing_len, k.shape[1], k.shape[2])
    return k.gather(0, g), v.gather(0, g), idx
