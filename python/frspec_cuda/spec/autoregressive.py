"""Our autoregressive baseline (`--mode ar`): a static cache, prefill with SDPA's causal
path, then one token per step, for one sequence (`generate`) or a batch (`generate_batch`,
each sequence prefilled at its own length, all stepping together). A step (one token through every layer with
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
                 top_p: float = 1.0, cuda_graphs: bool = True, batch: int = 1):
        if temperature > 0:
            check_sampling(temperature, top_k, top_p)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model, self.max_len, self.batch = model, max_len, batch
        self.sampling = (temperature, top_k, top_p)
        dev = model.device
        self.cache = model.new_cache(batch, max_len)
        self.cache_len = torch.zeros(batch, dtype=torch.int32, device=dev)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=dev)  # the next input
        self.uniform = torch.ones(batch, dtype=torch.float32, device=dev)
        self.one_node = torch.ones(batch, 1, 1, dtype=torch.int64, device=dev)  # tree mask: the node sees itself
        self.step = GraphedStep(self._decode_step, dev, cuda_graphs and graphs_supported(model))

    def fits(self, max_len: int, sampling: tuple) -> bool:
        return max_len <= self.max_len and sampling == self.sampling

    def _choose(self, logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """The next token from logits [rows, V]: argmax, or sampled with one uniform per row."""
        temperature, top_k, top_p = self.sampling
        if temperature <= 0:
            return logits.argmax(-1)
        return sample_from_probs(target_probs(logits, temperature, top_k, top_p), uniform)

    def _decode_step(self) -> None:
        m = self.model
        slots = self.cache_len.to(torch.long).view(self.batch, 1)
        hidden = m.forward(self.token, self.cache, self.cache_len, slots=slots, positions=slots,
                           tree_mask=self.one_node)
        self.token.copy_(self._choose(m.logits(hidden[:, -1]), self.uniform).view(self.batch, 1))
        self.cache_len += 1

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] | None = None, *,
                 generator: torch.Generator | None = None,
                 on_tokens: Callable[[list[int]], None] | None = None) -> list[int]:
        if self.batch != 1:
            raise ValueError(f"this decoder holds a batch of {self.batch}: use generate_batch")
        return self.generate_batch([prompt_ids], max_new_tokens, stop_ids, generator=generator,
                                   on_tokens=None if on_tokens is None else (lambda b, t: on_tokens(t)))[0]

    @torch.no_grad()
    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                       stop_ids: tuple[int, ...] | None = None, *, generator: torch.Generator | None = None,
                       on_tokens: Callable[[int, list[int]], None] | None = None) -> list[list[int]]:
        """One output per prompt (exactly `batch` prompts, any lengths); a sequence stops at
        its own stop id or budget, the batch steps until all have (finished rows keep
        stepping, discarded). Sampling draws one uniform per sequence per step."""
        m, dev, B = self.model, self.model.device, self.batch
        if len(prompts) != B:
            raise ValueError(f"this decoder holds a batch of {B}, got {len(prompts)} prompts")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) + max_new_tokens > self.max_len:
                raise ValueError(f"prompt {len(p)} + {max_new_tokens} new tokens exceed the cache's "
                                 f"{self.max_len} slots")
        stop = set(m.cfg.eos_token_ids if stop_ids is None else stop_ids)
        sampling = self.sampling[0] > 0

        def draw():
            if sampling:
                self.uniform.copy_(1.0 - torch.rand(B, generator=generator, device=dev))

        draw()
        zero = torch.zeros(1, dtype=torch.int32, device=dev)
        for b, p in enumerate(prompts):  # each prompt at its own length into its batch row
            hidden = m.forward(torch.tensor([p], device=dev), self.cache[:, :, b:b + 1], zero)
            self.token[b].copy_(self._choose(m.logits(hidden[:, -1]), self.uniform[b:b + 1]))
        self.cache_len.copy_(torch.tensor([len(p) for p in prompts], dtype=torch.int32))
        outs: list[list[int]] = [[] for _ in range(B)]
        running = set(range(B))
        while True:
            tokens = self.token.view(B).tolist()  # the one host read per step
            for b in sorted(running):
                outs[b].append(tokens[b])
                if on_tokens is not None:
                    on_tokens(b, [tokens[b]])
                if tokens[b] in stop or len(outs[b]) >= max_new_tokens:
                    running.discard(b)
            if not running:
                return outs
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
