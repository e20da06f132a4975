"""Speculative decoding (EAGLE-2 dynamic tree, FR-Spec draft head), batch 1: greedy and
lossless sampling.

This is the reference-path engine: every step is written in terms of the library's ops
(`fr_lm_head_topk`, `build_dynamic_tree`, `verify_tree_greedy`, `compact_kv_cache`) and
the shared Llama model, so it runs on CPU (reference ops) and GPU (kernels) alike. The
CUDA-graph engine of issue #4 will replace the Python glue, not the semantics.

Cache convention: a cache holds every committed token except the last one, the *root*,
which is the next input; cache_len counts the cached tokens.

One step:
1. Draft with an EAGLE-1/2 head (`models.eagle`: token + the target's feature of the
   previous position, one decoder layer; its draft positions sit one behind the target's)
   or the self-draft (the target's first `draft_layers` layers + final norm), scored by the
   FR-sliced LM head: expand the root, then `depth - 1` times the `topk` best beams,
   logging every candidate (token, parent candidate, cumulative log-prob).
2. `build_dynamic_tree` keeps the root + the `num_nodes - 1` best candidates.
3. The target scores all tree nodes in one forward (`tree_attention`); `verify_tree_greedy`
   accepts the longest path of argmax matches and the bonus token, or, when sampling,
   `verify_tree_sampling` checks the drafts against the target's processed probabilities
   (draft probabilities never enter, so the restricted FR vocabulary cannot bias output).
4. `compact_kv_cache` moves the accepted nodes' K/V into place; the draft cache is
   rewound to the root and re-fed the accepted tokens.
Greedy output is identical to the target's own greedy decoding (up to floating-point
near-ties between differently batched forwards).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .. import ops, tree
from ..models.eagle import EagleDraft
from ..models.llama import LlamaModel
from ..vocab import FRVocab
from .sampling import target_probs


@dataclass
class SpecStats:
    steps: int = 0
    accepted: int = 0  # draft tokens accepted (bonus tokens not counted)
    emitted: int = 0
    accept_lengths: list[int] = field(default_factory=list)
    # seconds per phase when generate(timing=True): drafting (draft forwards + head top-k),
    # verification (tree build + target tree forward + verify), the rest (compaction,
    # re-feeding the draft, bookkeeping); the device is synchronised between phases
    draft_s: float = 0.0
    verify_s: float = 0.0
    other_s: float = 0.0

    @property
    def mean_accept_length(self) -> float:
        """Tokens emitted per target forward (accepted drafts + the bonus token)."""
        return self.emitted / max(self.steps, 1)


class SpeculativeGenerator:
    def __init__(self, target: LlamaModel, draft_layers: int = 1, vocab: FRVocab | None = None,
                 depth: int = 6, topk: int = 10, num_nodes: int = 60, eagle: EagleDraft | None = None):
        if not 1 <= draft_layers <= target.cfg.num_layers:
            raise ValueError(f"draft_layers must be in [1, {target.cfg.num_layers}], got {draft_layers}")
        if not (1 <= topk <= 64 and depth >= 1 and 2 <= num_nodes <= 1024):
            raise ValueError(f"need 1 <= topk <= 64, depth >= 1, 2 <= num_nodes <= 1024 "
                             f"(got topk={topk}, depth={depth}, num_nodes={num_nodes})")
        history = topk + (depth - 1) * topk * topk
        if num_nodes - 1 > history:
            raise ValueError(f"num_nodes - 1 = {num_nodes - 1} exceeds the {history} candidates of depth {depth}, topk {topk}")
        if eagle is not None and (eagle.cfg.hidden_size != target.cfg.hidden_size or eagle.device != target.device
                                  or eagle.dtype != target.dtype):
            raise ValueError(f"EAGLE head {eagle.source} (hidden {eagle.cfg.hidden_size}, {eagle.dtype}, {eagle.device})"
                             f" does not fit the target (hidden {target.cfg.hidden_size}, {target.dtype}, "
                             f"{target.device})")
        self.target, self.draft_layers, self.eagle = target, draft_layers, eagle
        self.depth, self.topk, self.num_nodes = depth, topk, num_nodes
        V = target.cfg.vocab_size
        if vocab is None:
            vocab = FRVocab(torch.arange(V, dtype=torch.int32), "full")
        if int(vocab.ids.max()) >= V:
            raise ValueError(f"vocabulary {vocab.source} has ids >= the model's vocab_size {V}")
        self.vocab_ids = vocab.ids.to(target.device)
        self.draft_head = vocab.slice_lm_head(target.lm_head)  # sliced once, at load time

    # ----------------------------------------------------------------------- drafting

    def _draft_topk(self, hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.fr_lm_head_topk(hidden.to(self.draft_head.dtype).contiguous(), self.draft_head, self.vocab_ids, k)

    def _draft_forward(self, tokens, features, cache, **attention) -> torch.Tensor:
        zero = torch.zeros(1, dtype=torch.int32, device=self.target.device)
        if self.eagle is not None:
            return self.eagle.forward(tokens, features, cache, zero, **attention)
        return self.target.forward(tokens, cache, zero, self.draft_layers, **attention)

    def _draft(self, root: int, cache: torch.Tensor, cache_len: int, root_feature: torch.Tensor | None):
        """EAGLE-2 drafting; returns the history (tokens, parents, scores) [1, M] with
        M = topk + (depth - 1) * topk^2. The root is processed at draft slot `root_slot`
        (cache_len for the self-draft, one less for EAGLE, whose slot i holds token i + 1),
        then each level's `topk` beams at the next slots. All on the device: no host sync."""
        dev, k = self.target.device, self.topk
        L = cache.shape[3]
        root_slot = cache_len - 1 if self.eagle is not None else cache_len
        M = k + (self.depth - 1) * k * k
        h_tok = torch.empty(M, dtype=torch.long, device=dev)
        h_par = torch.empty(M, dtype=torch.int32, device=dev)
        h_score = torch.empty(M, dtype=torch.float32, device=dev)
        base_visible = torch.arange(L, device=dev) <= root_slot  # prefix + root slot
        feat = None if root_feature is None else root_feature.view(1, 1, -1)
        slot = torch.tensor([[root_slot]], device=dev)
        root_hidden = self._draft_forward(torch.tensor([[root]], device=dev), feat, cache, slots=slot, positions=slot,
                                          visible=base_visible.view(1, 1, L))
        ids, lp = self._draft_topk(root_hidden[:, -1], k)
        h_tok[:k], h_par[:k], h_score[:k] = ids[0], -1, lp[0]
        beams = torch.arange(k, device=dev)            # history index of each beam
        beam_feat = root_hidden[0, -1].expand(k, -1)   # EAGLE: the feature each beam is expanded with
        parent_vis = base_visible.expand(k, L)         # its parent's visible slots
        rows = torch.arange(k, device=dev)
        n, next_slot = k, root_slot + 1
        for level in range(1, self.depth):
            slots = torch.arange(next_slot, next_slot + k, device=dev)
            vis = parent_vis.clone()
            vis[rows, slots] = True  # own slot
            hidden = self._draft_forward(h_tok[beams].unsqueeze(0),
                                         beam_feat.unsqueeze(0) if self.eagle is not None else None, cache,
                                         slots=slots.unsqueeze(0),
                                         positions=torch.full((1, k), root_slot + level, device=dev),
                                         visible=vis.unsqueeze(0))
            next_slot += k
            ids, lp = self._draft_topk(hidden[0], k)  # [k beams, k children]
            scores = (h_score[beams].unsqueeze(1) + lp).reshape(-1)
            h_tok[n:n + k * k] = ids.reshape(-1)
            h_par[n:n + k * k] = beams.repeat_interleave(k).to(torch.int32)
            h_score[n:n + k * k] = scores
            best = torch.sort(scores, descending=True, stable=True).indices[:k]  # ties: lower index first
            parent = best // k
            beams, beam_feat, parent_vis = n + best, hidden[0, parent], vis[parent]
            n += k * k
        return h_tok.unsqueeze(0), h_par.unsqueeze(0), h_score.unsqueeze(0)

    # ------------------------------------------------------------------------ decoding

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] | None = None, *,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, timing: bool = False, on_tokens=None):
        """Greedy when temperature == 0 (output identical to greedy AR); otherwise lossless
        speculative sampling: each emitted token is distributed exactly as in
        `generate_sample` with the same temperature / top_k / top_p. `on_tokens` receives
        each step's accepted tokens (streaming); `timing` fills the stats' phase split."""
        m, dev = self.target, self.target.device
        stop = set(m.cfg.eos_token_ids if stop_ids is None else stop_ids)
        L = len(prompt_ids) + max_new_tokens + self.num_nodes + self.depth * self.topk + 2
        eagle = self.eagle
        if eagle is not None and len(prompt_ids) < 2:
            raise ValueError("an EAGLE draft needs a prompt of at least 2 tokens (its input pairs each token with "
                             "the target's feature of the previous one)")
        t_cache = m.new_cache(1, L)
        d_cache = eagle.new_cache(1, L) if eagle is not None else m.new_cache(1, L)
        # Prefill everything but the last prompt token (the first root) into both caches.
        prefix = torch.tensor([prompt_ids[:-1]], device=dev)
        zero = torch.zeros(1, dtype=torch.int32, device=dev)
        root_feature = None
        if prefix.shape[1]:
            feats = m.forward(prefix, t_cache, zero)
            if eagle is None:
                m.forward(prefix, d_cache, zero, self.draft_layers)
            else:  # pairs (x_{i+1}, h_i) for i < n - 2; the root's pair is drafted with the tree
                if prefix.shape[1] > 1:
                    eagle.forward(prefix[:, 1:], feats[:, :-1], d_cache, zero)
                root_feature = feats[0, -1]
        cache_len = len(prompt_ids) - 1
        root = prompt_ids[-1]
        out: list[int] = []
        stats = SpecStats()

        def mark():
            if timing and dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter()

        while len(out) < max_new_tokens:
            t0 = mark()
            hist = self._draft(root, d_cache, cache_len, root_feature)
            t1 = mark()
            cl = torch.tensor([cache_len], dtype=torch.int32, device=dev)
            # (inputs built here are well-formed: the ops' host-side validation, a device sync, is skipped)
            t = tree.build_dynamic_tree(*hist, torch.tensor([root], device=dev), cl,
                                        min(self.num_nodes, hist[0].shape[1] + 1), validate=False)
            # the target scores every node at once: nodes at slots cache_len + node, tree attention
            N = t.tokens.shape[1]
            hidden = m.forward(t.tokens, t_cache, cl, slots=cache_len + torch.arange(N, device=dev).unsqueeze(0),
                               positions=t.positions, tree_mask=t.mask)  # explicit slots: no bounds-check sync
            logits = m.logits(hidden)
            if temperature > 0:
                v = tree.verify_tree_sampling(t.tokens, t.parents, target_probs(logits, temperature, top_k, top_p),
                                              generator=generator, validate=False)
            else:
                v = tree.verify_tree_greedy(t.tokens, t.parents, logits.argmax(-1), validate=False)
            n_acc = int(v.accept_len[0])
            t2 = mark()
            path = v.accepted[0, :n_acc]
            tree.compact_kv_cache(t_cache, cl, v.accepted, v.accept_len)
            new_tokens = t.tokens[0, path[1:].long()].tolist() + [int(v.bonus[0])]
            # Draft cache: keep the root (processed at its slot), re-feed the accepted drafts.
            if eagle is not None:
                if n_acc > 1:  # (a_j, h of the node before a_j) at slots cache_len .. cache_len + n_acc - 2
                    refeed = cache_len + torch.arange(n_acc - 1, device=dev).unsqueeze(0)
                    eagle.forward(torch.tensor([new_tokens[:-1]], device=dev), hidden[:, path[:-1].long()], d_cache,
                                  cl, slots=refeed)
                root_feature = hidden[0, path[-1].long()]
            elif n_acc > 1:
                m.forward(torch.tensor([new_tokens[:-1]], device=dev), d_cache, cl, self.draft_layers,
                          slots=cache_len + 1 + torch.arange(n_acc - 1, device=dev).unsqueeze(0))
            cache_len += n_acc
            root = new_tokens[-1]
            if timing:
                t3 = mark()
                stats.draft_s += t1 - t0
                stats.verify_s += t2 - t1
                stats.other_s += t3 - t2
            stats.steps += 1
            stats.accepted += n_acc - 1
            stats.accept_lengths.append(n_acc)
            emitted: list[int] = []
            for tok in new_tokens:
                emitted.append(tok)
                if tok in stop or len(out) + len(emitted) >= max_new_tokens:
                    break
            out += emitted
            stats.emitted += len(emitted)
            if on_tokens is not None:  # streaming: a step's tokens as soon as they are accepted
                on_tokens(emitted)
            if out[-1] in stop or len(out) >= max_new_tokens:
                return out, stats
        return out, stats
