"""Our autoregressive baseline (`--mode ar`), batch 1: a static cache, prefill with SDPA's
causal path, then one token per step. A step (one token through every layer with
`tree_attention` over the cache -- a one-node tree --, the LM head and the choice of the
next token) touches only device tensors, so on the GPU it is one CUDA-graph replay; the
host reads each chosen token once (to stream it and check for a stop id)."""

from __future__ import annotations

from typing import Callable

import torch

from ..graphs import GraphedStep, graphs_supported
from ..models.llama import LlamaModel
from .sampling import check_sampling, sample_from_probs, target_probs


class AutoregressiveDecoder:
    """Holds the cache (max_len slots) and the captured step, so later `generate` calls
    that fit reuse both. temperature 0 is greedy; otherwise samples from the target's
    processed distribution (`target_probs`) with one uniform per token from `generator`."""

    def __init__(self, model: LlamaModel, max_len: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, cuda_graphs: bool = True):
        if temperature > 0:
            check_sampling(temperature, top_k, top_p)
        self.model, self.max_len = model, max_len
        self.sampling = (temperature, top_k, top_p)
        dev = model.device
        self.cache = model.new_cache(1, max_len)
        self.cache_len = torch.zeros(1, dtype=torch.int32, device=dev)
        self.token = torch.zeros(1, 1, dtype=torch.long, device=dev)  # the next input
        self.uniform = torch.ones(1, dtype=torch.float32, device=dev)
        self.one_node = torch.ones(1, 1, 1, dtype=torch.int64, device=dev)  # tree mask: the node sees itself
        self.step = GraphedStep(self._decode_step, dev, cuda_graphs and graphs_supported(model))

    def fits(self, max_len: int, sampling: tuple) -> bool:
        return max_len <= self.max_len and sampling == self.sampling

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        temperature, top_k, top_p = self.sampling
        if temperature <= 0:
            return logits.argmax(-1)
        return sample_from_probs(target_probs(logits, temperature, top_k, top_p), self.uniform)

    def _decode_step(self) -> None:
        m = self.model
        slots = self.cache_len.to(torch.long).view(1, 1)
        hidden = m.forward(self.token, self.cache, self.cache_len, slots=slots, positions=slots,
                           tree_mask=self.one_node)
        self.token.copy_(self._choose(m.logits(hidden[:, -1])).view(1, 1))
        self.cache_len += 1

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] | None = None, *,
                 generator: torch.Generator | None = None,
                 on_tokens: Callable[[list[int]], None] | None = None) -> list[int]:
        m, dev = self.model, self.model.device
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + max_new_tokens > self.max_len:
            raise ValueError(f"prompt {len(prompt_ids)} + {max_new_tokens} new tokens exceed the cache's "
                             f"{self.max_len} slots")
        stop = set(m.cfg.eos_token_ids if stop_ids is None else stop_ids)
        sampling = self.sampling[0] > 0

        def draw():
            if sampling:
                self.uniform.copy_(1.0 - torch.rand(1, generator=generator, device=dev))

        self.cache_len.zero_()
        hidden = m.forward(torch.tensor([prompt_ids], device=dev), self.cache, self.cache_len)
        self.cache_len.fill_(len(prompt_ids))
        draw()
        self.token.copy_(self._choose(m.logits(hidden[:, -1])).view(1, 1))
        out: list[int] = []
        while True:
            token = int(self.token)  # the one host read per token
            out.append(token)
            if on_tokens is not None:
                on_tokens([token])
            if token in stop or len(out) >= max_new_tokens:
                return out
            draw()
            self.step()


def decoder_for(model: LlamaModel, max_len: int, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0) -> AutoregressiveDecoder:
    """The model's cached decoder when it fits (same sampling settings, enough slots), else a
    new one (cache sized with some slack so nearby requests reuse it, graph re-captured)."""
    key = (temperature, top_k, top_p)
    dec = getattr(model, "_ar_decoder", None)
    if dec is None or not dec.fits(max_len, key):
        model._ar_decoder = None  # free the old cache first
        dec = model._ar_decoder = AutoregressiveDecoder(model, max(max_len, 64) + 64, temperature, top_k, top_p)
    return dec


def generate_greedy(model: LlamaModel, prompt_ids: list[int], max_new_tokens: int,
                    stop_ids: tuple[int, ...] | None = None,
                    on_tokens: Callable[[list[int]], None] | None = None) -> list[int]:
    return decoder_for(model, len(prompt_ids) + max_new_tokens).generate(prompt_ids, max_new_tokens, stop_ids,
                                                                         on_tokens=on_tokens)


def generate_sample(model: LlamaModel, prompt_ids: list[int], max_new_tokens: int, temperature: float,
                    top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                    stop_ids: tuple[int, ...] | None = None, on_tokens=None) -> list[int]:
    """Autoregressive sampling baseline: each token drawn from `target_probs`."""
    return decoder_for(model, len(prompt_ids) + max_new_tokens, temperature, top_k, top_p).generate(
        prompt_ids, max_new_tokens, stop_ids, generator=generator, on_tokens=on_tokens)


NEAR_TIE = 0.125  # top-2 logit gap counted as a tie for logits up to 4 in magnitude (a few bf16 ulps)


@torch.no_grad()
def divergence_gap(model: LlamaModel, prompt_ids: list[int], expect: list[int],
                   got: list[int]) -> tuple[int, float, float] | None:
    """Where `got` first parts from the greedy output `expect`: None when they agree, else
    (token index j, the target's top-2 logit gap after prompt + expect[:j] from a fresh
    prefill, the near-tie threshold NEAR_TIE scaled with the logits' magnitude as bf16
    spacing is). Divergences of a lossless greedy decoder must be near-ties."""
    if got == expect:
        return None
    j = next((i for i, (a, b) in enumerate(zip(got, expect)) if a != b), min(len(got), len(expect)))
    dev = model.device
    ctx = torch.tensor([prompt_ids + expect[:j]], device=dev)
    cache = model.new_cache(1, ctx.shape[1] + 1)
    logits = model.logits(model.forward(ctx, cache, torch.zeros(1, dtype=torch.int32, device=dev))[:, -1])
    top2 = logits[0].topk(2).values
    return j, float(top2[0] - top2[1]), NEAR_TIE * max(1.0, float(logits.abs().max()) / 4)
