"""The target's sampling distribution (temperature, top-k, top-p) and the autoregressive
sampling baseline's token choice. Speculative sampling verifies against exactly these
probabilities, so its output has the distribution of `autoregressive.generate_sample`."""

from __future__ import annotations

import torch


def check_sampling(temperature: float, top_k: int = 0, top_p: float = 1.0) -> None:
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling (0 means greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: no top-k filter), got {top_k}")


def target_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits [..., V] -> fp32 probabilities after temperature, then top-k, then top-p
    (the smallest set of most likely tokens whose mass reaches top_p), renormalised."""
    check_sampling(temperature, top_k, top_p)
    x = logits.float() / temperature
    if top_k and top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    p = torch.softmax(x, dim=-1)
    if top_p < 1:
        sorted_p, order = p.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the strictly more likely tokens
        drop = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order, before >= top_p)
        p = p.masked_fill(drop, 0)
        p = p / p.sum(-1, keepdim=True)
    return p


def sample_from_probs(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling without host sync: probs [..., V], uniform [...] in (0, 1] ->
    the first token whose cumulative probability (fp64) reaches uniform x total, which
    always has non-zero probability."""
    cdf = probs.double().cumsum(-1)
    target = (uniform.double().reshape(*cdf.shape[:-1], 1) * cdf[..., -1:])
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
