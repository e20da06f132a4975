"""Speculative decoding (EAGLE-2 dynamic tree, FR-Spec draft head): greedy and lossless
sampling, one sequence (`generate`) or a batch of them (`generate_batch`).

Every step is written in terms of the library's ops (`fr_lm_head_topk`,
`build_dynamic_tree`, `verify_tree_greedy` / `_sampling`, `compact_kv_cache`) and the
shared Llama model on device tensors only, so it runs on CPU (reference ops) and GPU
(kernels) alike; on the GPU its three parts (draft, verify, commit) replay as CUDA graphs
and the host reads the device once per step (the accepted tokens).

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

Batches: B sequences of any prompt lengths decode together, each with its own cache
length, tree, accepted path and bonus token; every op of the step takes the batch
dimension, so a step is still three graph replays and one host read ([B] accepted
tokens). A sequence that has finished (stop token or its token budget) stays in the
batch until all have: its cache length is pinned where it finished, so its further
(discarded) steps never grow its cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .. import ops, tree
from ..graphs import GraphedStep, graphs_supported
from ..models.eagle import EagleDraft
from ..models.llama import LlamaModel
from ..vocab import FRVocab
from .sampling import check_sampling, target_probs


@dataclass
class SpecStats:
    steps: int = 0
    seq_steps: int = 0  # steps x sequences still running (= steps for one sequence)
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
        """Tokens emitted per sequence per target forward (accepted drafts + the bonus token)."""
        return self.emitted / max(self.seq_steps, 1)


class SpeculativeGenerator:
    def __init__(self, target: LlamaModel, draft_layers: int = 1, vocab: FRVocab | None = None,
                 depth: int = 6, topk: int = 10, num_nodes: int = 60, eagle: EagleDraft | None = None,
                 cuda_graphs: bool = True):
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
        self.cuda_graphs = cuda_graphs
        self._sess: _Session | None = None

    # ----------------------------------------------------------------------- drafting

    def _draft_topk(self, hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return ops.fr_lm_head_topk(hidden.to(self.draft_head.dtype).contiguous(), self.draft_head, self.vocab_ids, k)

    def _draft_forward(self, tokens, features, cache, cache_len, **attention) -> torch.Tensor:
        if self.eagle is not None:
            return self.eagle.forward(tokens, features, cache, cache_len, **attention)
        return self.target.forward(tokens, cache, cache_len, self.draft_layers, **attention)

    def _draft(self, s: "_Session") -> None:
        """EAGLE-2 drafting into s.hist = (tokens, parents, scores) [B, M] with
        M = topk + (depth - 1) * topk^2. Each sequence's draft tree -- the root, then each
        level's `topk` beams -- sits at draft slots root_slot + node (root_slot = cache_len
        for the self-draft, one less for EAGLE, whose slot i holds token i + 1; node 0 the
        root, level l's beams 1 + (l - 1) topk ..). Each level's forward is `tree_attention`
        over the prefix and the tree so far: a beam sees its ancestors and itself (packed
        bits, one word per 64 nodes). Device tensors only."""
        dev, k, B = self.target.device, self.topk, s.B
        root_slot = s.cache_len.to(torch.long) - (1 if self.eagle is not None else 0)  # [B]
        base = root_slot.to(torch.int32)  # the draft tree's cache_len
        M = k + (self.depth - 1) * k * k
        h_tok = torch.empty(B, M, dtype=torch.long, device=dev)
        h_par = torch.empty(B, M, dtype=torch.int32, device=dev)
        h_score = torch.empty(B, M, dtype=torch.float32, device=dev)
        feat = s.root_feature.unsqueeze(1) if self.eagle is not None else None
        slot = root_slot.view(B, 1)
        root_hidden = self._draft_forward(s.root.view(B, 1), feat, s.d_cache, base, slots=slot, positions=slot,
                                          tree_mask=s.root_mask, tree_len=1)
        ids, lp = self._draft_topk(root_hidden[:, -1], k)  # [B, k]
        h_tok[:, :k], h_par[:, :k], h_score[:, :k] = ids, -1, lp
        beams = torch.arange(k, device=dev).expand(B, k)  # history index of each beam
        beam_feat = root_hidden[:, -1:].expand(B, k, -1)  # EAGLE: the feature each beam is expanded with
        W = s.draft_bits.shape[-1]
        parent_bits = s.draft_bits[0, :1].view(1, 1, W).expand(B, k, W)  # the nodes its parent sees (root: itself)
        rows = torch.arange(k, device=dev)
        n = k
        for level in range(1, self.depth):
            nodes = 1 + level * k  # the tree so far, this level's beams last
            slots = root_slot.view(B, 1) + 1 + (level - 1) * k + rows
            bits = parent_bits | s.draft_bits[level]  # + own node
            mask = bits[..., :(nodes + 63) // 64].contiguous()
            hidden = self._draft_forward(h_tok.gather(1, beams), beam_feat if self.eagle is not None else None,
                                         s.d_cache, base, slots=slots, positions=(root_slot + level).view(B, 1).expand(B, k),
                                         tree_mask=mask, tree_len=nodes)
            ids, lp = self._draft_topk(hidden.reshape(B * k, -1), k)  # [B k beams, k children]
            scores = (h_score.gather(1, beams).unsqueeze(2) + lp.view(B, k, k)).reshape(B, k * k)
            h_tok[:, n:n + k * k] = ids.view(B, k * k)
            h_par[:, n:n + k * k] = beams.repeat_interleave(k, dim=1).to(torch.int32)
            h_score[:, n:n + k * k] = scores
            best = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # ties: lower index first
            parent = best // k
            beams = n + best
            beam_feat = hidden.gather(1, parent.unsqueeze(2).expand(B, k, hidden.shape[-1]))
            parent_bits = bits.gather(1, parent.unsqueeze(2).expand(B, k, W))
            n += k * k
        s.hist = (h_tok, h_par, h_score)

    # ----------------------------------------------------------------- one step, 3 parts

    def _verify(self, s: "_Session") -> None:
        """Build the tree from s.hist; the target scores every node in one forward (nodes at
        slots cache_len + node, tree attention); greedy or sampling verification."""
        m = self.target
        # (inputs built here are well-formed: the ops' host-side validation, a device sync, is skipped)
        t = tree.build_dynamic_tree(*s.hist, s.root, s.cache_len, s.num_nodes, validate=False)
        hidden = m.forward(t.tokens, s.t_cache, s.cache_len, slots=s.cache_len.to(torch.long).view(s.B, 1) + s.node_ids,
                           positions=t.positions, tree_mask=t.mask)
        logits = m.logits(hidden)
        temperature, top_k, top_p = s.sampling
        if temperature > 0:
            v = tree.verify_tree_sampling(t.tokens, t.parents, target_probs(logits, temperature, top_k, top_p),
                                          uniforms=s.uniforms, validate=False)
        else:
            v = tree.verify_tree_greedy(t.tokens, t.parents, logits.argmax(-1), validate=False)
        s.tree, s.hidden, s.verdict = t, hidden, v

    def _commit(self, s: "_Session") -> None:
        """Emit each sequence's accepted tokens + bonus into s.emit[b] = [n, tokens (n of
        them), padding]; re-feed the accepted drafts to the draft model, on the GPU with a
        fixed shape for the graph (depth tokens: the slots past the accepted ones are
        overwritten by the next drafting before anything sees them), on the CPU the longest
        accepted run of the batch; move the accepted nodes' K/V into place and advance
        cache_len (pinned for finished sequences); the bonus is the next root."""
        t, v, hidden = s.tree, s.verdict, s.hidden
        B, P = s.B, s.path_len
        n_acc = v.accept_len.to(torch.long)                       # [B], root included
        path = v.accepted[:, :P].to(torch.long).clamp(min=0)     # node indices, padding -> 0
        drafted = t.tokens.gather(1, path[:, 1:])                # accepted drafts (valid below n_acc - 1)
        emitted = torch.cat([drafted, v.bonus.view(B, 1)], 1)    # [B, P]
        emitted = torch.where(s.path_ids == (n_acc - 1).view(B, 1), v.bonus.view(B, 1), emitted)
        s.emit[:, 0] = n_acc
        s.emit[:, 1:] = emitted
        R = self.depth
        if s.t_cache.device.type == "cpu":  # no graph to keep static: feed only the accepted drafts
            R = int(n_acc.max()) - 1
        refeed_tokens = emitted[:, :R] if P > R else torch.cat([emitted, emitted.new_zeros(B, R - P)], 1)
        last = path.gather(1, (n_acc - 1).view(B, 1))             # the deepest accepted node [B, 1]
        if R > 0:
            slots = s.cache_len.to(torch.long).view(B, 1) + s.refeed_ids[:, :R]
            if self.eagle is not None:  # pairs (a_j, h of the node before a_j) at draft slots cache_len + j
                feat_idx = torch.cat([path, path.new_zeros(B, max(R - P, 0))], 1)[:, :R]
                feats = hidden.gather(1, feat_idx.unsqueeze(2).expand(B, R, hidden.shape[-1]))
                self.eagle.forward(refeed_tokens, feats, s.d_cache, s.cache_len, slots=slots)
            else:  # self-draft: a_j at its own position cache_len + j (j >= 1)
                self.target.forward(refeed_tokens, s.d_cache, s.cache_len, self.draft_layers, slots=slots + 1)
        if self.eagle is not None:
            s.root_feature.copy_(hidden.gather(1, last.unsqueeze(2).expand(B, 1, hidden.shape[-1]))[:, 0])
        s.root.copy_(v.bonus)
        tree.compact_kv_cache(s.t_cache, s.cache_len, v.accepted, v.accept_len)  # advances cache_len
        if B > 1:  # finished sequences keep their length (their steps are discarded)
            s.cache_len.copy_(torch.where(s.active, s.cache_len, s.pinned_len))

    # ------------------------------------------------------------------------ decoding

    def _session(self, batch: int, max_len: int, sampling: tuple) -> "_Session":
        s = self._sess
        if s is None or s.B != batch or s.L < max_len or s.sampling != sampling:
            self._sess = None  # free the old caches first
            s = self._sess = _Session(self, batch, max_len + 64, sampling)
        return s

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] | None = None, *,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, timing: bool = False, on_tokens=None):
        """Greedy when temperature == 0 (output identical to greedy AR); otherwise lossless
        speculative sampling: each emitted token is distributed exactly as in
        `generate_sample` with the same temperature / top_k / top_p. `on_tokens` receives
        each step's accepted tokens (streaming); `timing` fills the stats' phase split.
        Returns (tokens, SpecStats)."""
        outs, stats = self.generate_batch([prompt_ids], max_new_tokens, stop_ids, temperature=temperature,
                                          top_k=top_k, top_p=top_p, generator=generator, timing=timing,
                                          on_tokens=None if on_tokens is None else (lambda b, t: on_tokens(t)))
        return outs[0], stats

    @torch.no_grad()
    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                       stop_ids: tuple[int, ...] | None = None, *, temperature: float = 0.0, top_k: int = 0,
                       top_p: float = 1.0, generator: torch.Generator | None = None, timing: bool = False,
                       on_tokens=None):
        """`generate` for B prompts of any lengths at once: returns ([B] token lists,
        SpecStats over the batch). Each sequence's output is what `generate` gives it alone
        (greedy: the same tokens up to floating-point near-ties; sampling: the same
        distribution); it stops at its own stop id or token budget. `on_tokens(b, tokens)`
        streams sequence b's accepted tokens. Uniforms for sampling are drawn [B, nodes]
        per step from `generator`."""
        m, dev = self.target, self.target.device
        stop = set(m.cfg.eos_token_ids if stop_ids is None else stop_ids)
        eagle = self.eagle
        B = len(prompts)
        if B == 0:
            raise ValueError("no prompts")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if eagle is not None and len(p) < 2:
                raise ValueError(f"prompt {i}: an EAGLE draft needs a prompt of at least 2 tokens (its input pairs "
                                 "each token with the target's feature of the previous one)")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature > 0:
            check_sampling(temperature, top_k, top_p)
        longest = max(len(p) for p in prompts)
        s = self._session(B, longest + max_new_tokens + self.num_nodes + self.depth * self.topk + 2,
                          (temperature, top_k, top_p) if temperature > 0 else (0.0, 0, 1.0))
        # Prefill everything but the last prompt token (the first root) into both caches, one
        # sequence at a time (its own length) into its batch row.
        zero = torch.zeros(1, dtype=torch.int32, device=dev)
        for b, p in enumerate(prompts):
            prefix = torch.tensor([p[:-1]], device=dev)
            if not prefix.shape[1]:
                continue
            t_row, d_row = s.t_cache[:, :, b:b + 1], s.d_cache[:, :, b:b + 1]
            feats = m.forward(prefix, t_row, zero)
            if eagle is None:
                m.forward(prefix, d_row, zero, self.draft_layers)
            else:  # pairs (x_{i+1}, h_i) for i < n - 2; the root's pair is drafted with the tree
                if prefix.shape[1] > 1:
                    eagle.forward(prefix[:, 1:], feats[:, :-1], d_row, zero)
                s.root_feature[b].copy_(feats[0, -1])
        s.cache_len.copy_(torch.tensor([len(p) - 1 for p in prompts], dtype=torch.int32))
        s.root.copy_(torch.tensor([p[-1] for p in prompts]))
        s.active.fill_(True)
        outs: list[list[int]] = [[] for _ in range(B)]
        running = set(range(B))
        stats = SpecStats()

        def mark():
            if timing and dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter()

        while running:
            if temperature > 0:
                s.uniforms.copy_(1.0 - torch.rand(B, s.num_nodes, generator=generator, device=dev))
            t0 = mark()
            s.draft()
            t1 = mark()
            s.verify()
            t2 = mark()
            s.commit()
            emit = s.emit.tolist()  # the one host read per step
            if timing:
                t3 = mark()
                stats.draft_s += t1 - t0
                stats.verify_s += t2 - t1
                stats.other_s += t3 - t2
            stats.steps += 1
            for b in sorted(running):
                n_acc, out = emit[b][0], outs[b]
                stats.seq_steps += 1
                stats.accepted += n_acc - 1
                stats.accept_lengths.append(n_acc)
                emitted: list[int] = []
                for tok in emit[b][1:1 + n_acc]:
                    emitted.append(tok)
                    if tok in stop or len(out) + len(emitted) >= max_new_tokens:
                        break
                out += emitted
                stats.emitted += len(emitted)
                if on_tokens is not None:  # streaming: a step's tokens as soon as they are accepted
                    on_tokens(b, emitted)
                if out[-1] in stop or len(out) >= max_new_tokens:
                    running.discard(b)
                    if running:  # pin its cache where it is now (read by the next commit)
                        s.pinned_len[b] = s.cache_len[b]
                        s.active[b] = False
        return outs, stats


class _Session:
    """What one cache size and sampling setting needs: both caches, the step's persistent
    device tensors and its three parts as `GraphedStep`s (CUDA graphs on the GPU, sharing
    one memory pool: they always run in capture order)."""

    def __init__(self, gen: SpeculativeGenerator, B: int, L: int, sampling: tuple):
        m, dev = gen.target, gen.target.device
        self.B, self.L, self.sampling = B, L, sampling
        self.t_cache = m.new_cache(B, L)
        self.d_cache = gen.eagle.new_cache(B, L) if gen.eagle is not None else m.new_cache(B, L)
        M = gen.topk + (gen.depth - 1) * gen.topk * gen.topk
        self.num_nodes = min(gen.num_nodes, M + 1)
        self.path_len = min(gen.depth + 1, self.num_nodes)
        self.cache_len = torch.zeros(B, dtype=torch.int32, device=dev)
        self.active = torch.ones(B, dtype=torch.bool, device=dev)  # False: finished, cache_len pinned
        self.pinned_len = torch.zeros(B, dtype=torch.int32, device=dev)
        self.root = torch.zeros(B, dtype=torch.long, device=dev)
        self.root_feature = torch.zeros(B, m.cfg.hidden_size, dtype=m.dtype, device=dev)
        self.uniforms = torch.ones(B, self.num_nodes, dtype=torch.float32, device=dev)
        self.emit = torch.zeros(B, 1 + self.path_len, dtype=torch.long, device=dev)
        # draft_bits[l]: the own-node bit of each of level l's topk beams (level 0: the root,
        # node 0, in row 0), packed as build_dynamic_tree packs masks: node i is bit i % 64 of
        # word i // 64 (int64, bit 63 the sign)
        W = (1 + (gen.depth - 1) * gen.topk + 63) // 64
        own = torch.zeros(gen.depth, gen.topk, W, dtype=torch.int64)
        for level in range(gen.depth):
            for r in range(gen.topk if level else 1):
                node = 0 if level == 0 else 1 + (level - 1) * gen.topk + r
                own[level, r, node // 64] = torch.tensor(1, dtype=torch.int64) << (node % 64)
        self.draft_bits = own.to(dev)
        self.root_mask = own[0, :1, :1].expand(B, 1, 1).contiguous().to(dev)  # the root sees itself
        self.node_ids = torch.arange(self.num_nodes, device=dev).unsqueeze(0)
        self.path_ids = torch.arange(self.path_len, device=dev)
        self.refeed_ids = torch.arange(gen.depth, device=dev).unsqueeze(0)
        on = gen.cuda_graphs and graphs_supported(m)
        pool = torch.cuda.graph_pool_handle() if on else None
        self.draft = GraphedStep(lambda: gen._draft(self), dev, on, pool)
        self.verify = GraphedStep(lambda: gen._verify(self), dev, on, pool)
        self.commit = GraphedStep(lambda: gen._commit(self), dev, on, pool)
