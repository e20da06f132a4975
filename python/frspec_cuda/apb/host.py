"""APB prefill and Star-style decode of a Llama-family model, written once for both ways
of running it:

- distributed: one host per rank of a `torch.distributed` group (`DistributedComm`; NCCL
  between GPUs, gloo on CPU), each process holding only its own block;
- simulated: every host in one process, in turn (`LocalComm`), the reference for the
  distributed run and the one-device mode.

Prefill, per layer: every host projects q/k/v for [anchor; local], scores its local block
and selects `passing_len` keys/values per KV head (after RoPE); the hosts all-gather the
passing blocks; host r attends with `apb_attention` over [passing of hosts < r | anchor |
local] and runs the rest of the layer. Only the local block's K/V is kept.

Decode (and the query after the context), per layer: each host attends its own cache,
the last host also the new tokens (whose K/V only it stores); the (out, lse) pairs are
all-gathered and merged with `merge_attention_states`, so every host holds the same hidden
state and picks the same token.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import ops
from ..models.llama import LlamaModel, rms_norm
from .attention import apb_attention, attention_with_lse
from .compress import RetainingHeads, query_aware_scores, select_passing

COMPRESSORS = ("query", "retaining")


@dataclass(frozen=True)
class ApbConfig:
    """num_hosts: hosts (ranks) the context is split over. anchor_len: tokens of the
    context's beginning that hosts 1.. prepend to their block. passing_len: tokens per KV
    head each host passes on. compressor: "query" (training-free) or "retaining" (needs
    RetainingHeads). obs_len: observing rows of the query-aware scorer when no query span
    is marked (the anchor's last rows, or the block's last rows without an anchor)."""

    num_hosts: int
    anchor_len: int = 0
    passing_len: int = 0
    compressor: str = "query"
    obs_len: int = 64

    # APB's settings for 8 hosts (FACTS.md): context -> (anchor_len, passing_len)
    PAPER_8_HOSTS = {32768: (1024, 512), 131072: (4096, 2048), 524288: (8192, 8192)}


@dataclass(frozen=True)
class ApbLayout:
    """Where each host's block lies in the context: block r = [starts[r], starts[r] + lengths[r])."""

    context_len: int
    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    anchor_len: int
    passing_len: int
    query_span: tuple[int, int] | None  # anchor rows holding the embedded query

    @property
    def num_hosts(self) -> int:
        return len(self.starts)

    def anchor_of(self, rank: int) -> int:
        return 0 if rank == 0 else self.anchor_len


def plan_layout(context_len: int, cfg: ApbConfig, query_span: tuple[int, int] | None = None) -> ApbLayout:
    """Split a context over cfg.num_hosts hosts: equal blocks of ceil(n / H) tokens, the last
    one shorter when H does not divide n (the kernel takes any lengths, so nothing is padded)."""
    H, A, P = cfg.num_hosts, cfg.anchor_len, cfg.passing_len
    if H < 1:
        raise ValueError(f"num_hosts must be >= 1, got {H}")
    if A < 0 or P < 0:
        raise ValueError(f"anchor_len and passing_len must be >= 0, got {A}, {P}")
    if cfg.compressor not in COMPRESSORS:
        raise ValueError(f"compressor must be one of {COMPRESSORS}, got {cfg.compressor!r}")
    block = math.ceil(context_len / H) if context_len > 0 else 0
    starts = tuple(r * block for r in range(H))
    lengths = tuple(min(block, context_len - s) for s in starts)
    if context_len < H or lengths[-1] <= 0:
        raise ValueError(f"a context of {context_len} tokens cannot be split over {H} hosts "
                         f"(blocks of {block} leave the last host empty)")
    if H > 1 and A > block:
        raise ValueError(f"the block ({block} tokens = ceil({context_len} / {H} hosts)) is shorter than "
                         f"anchor_len {A}")
    if H > 1 and P > min(lengths[:-1]):
        raise ValueError(f"passing_len {P} is longer than a block ({min(lengths[:-1])} tokens)")
    if query_span is not None:
        a, b = query_span
        if not 0 <= a < b <= A:
            raise ValueError(f"query_span {query_span} must lie inside the anchor [0, {A})")
    return ApbLayout(context_len, starts, lengths, A, P, query_span)


def embed_query(context_ids: list[int], query_ids: list[int], after: int = 16) -> tuple[list[int], tuple[int, int]]:
    """APB's input: the query inserted after the first `after` context tokens, so that the
    anchor (the context's beginning) carries it to every host. Returns the ids and the
    query's span (for `plan_layout(query_span=...)`)."""
    after = min(after, len(context_ids))
    ids = context_ids[:after] + query_ids + context_ids[after:]
    return ids, (after, after + len(query_ids))


# ----------------------------------------------------------------------------- comms


class LocalComm:
    """All hosts in this process: a gather is the list of every host's tensor."""

    def __init__(self, num_hosts: int):
        self.num_hosts = num_hosts
        self.seconds = 0.0

    def all_gather(self, mine: list[torch.Tensor]) -> list[torch.Tensor]:
        assert len(mine) == self.num_hosts
        return mine

    def broadcast_from_last(self, t: torch.Tensor) -> torch.Tensor:
        return t


class DistributedComm:
    """One host per rank of `group`: all_gather / broadcast through torch.distributed.
    `seconds` accumulates the time spent inside communication calls (synchronised)."""

    def __init__(self, group=None):
        import torch.distributed as dist

        self.dist, self.group = dist, group
        self.num_hosts = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.seconds = 0.0

    def _sync(self, t):
        if t.is_cuda:
            torch.cuda.synchronize(t.device)

    def all_gather(self, mine: list[torch.Tensor]) -> list[torch.Tensor]:
        (t,) = mine
        t = t.contiguous()
        self._sync(t)
        start = time.perf_counter()
        if t.is_cuda:
            out = t.new_empty((self.num_hosts,) + tuple(t.shape))
            self.dist.all_gather_into_tensor(out, t, group=self.group)
            parts = list(out.unbind(0))
        else:
            parts = [torch.empty_like(t) for _ in range(self.num_hosts)]
            self.dist.all_gather(parts, t, group=self.group)
        self._sync(t)
        self.seconds += time.perf_counter() - start
        return parts

    def broadcast_from_last(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        self._sync(t)
        start = time.perf_counter()
        self.dist.broadcast(t, src=self.dist.get_global_rank(self.group, self.num_hosts - 1)
                            if self.group is not None else self.num_hosts - 1, group=self.group)
        self._sync(t)
        self.seconds += time.perf_counter() - start
        return t


class TimingComm(LocalComm):
    """For timing one host's compute on one device: every other host's contribution is a
    copy of this host's (right shapes and dtypes, no communication)."""

    def all_gather(self, mine):
        (t,) = mine
        return [t] * self.num_hosts


# ----------------------------------------------------------------------------- hosts


@dataclass
class Host:
    rank: int
    start: int          # first context position of the block
    length: int         # block length
    anchor_len: int     # 0 on host 0
    cache: torch.Tensor  # [layers, 2, capacity, Hkv, D]: the block's K/V, then new tokens (last host)
    cache_len: int = 0
    is_last: bool = False
    x: torch.Tensor | None = field(default=None, repr=False)  # [anchor + block, hidden] during prefill
    positions: torch.Tensor | None = field(default=None, repr=False)


class ApbRunner:
    """APB over a model for the hosts this process runs (all of them when simulating, one
    per rank when distributed). Use `generate` for prefill + query + greedy decode."""

    def __init__(self, model: LlamaModel, cfg: ApbConfig, comm=None, ranks: list[int] | None = None,
                 retaining_heads: RetainingHeads | None = None):
        self.model, self.cfg = model, cfg
        self.comm = comm if comm is not None else LocalComm(cfg.num_hosts)
        if self.comm.num_hosts != cfg.num_hosts:
            raise ValueError(f"the communicator has {self.comm.num_hosts} hosts (ranks), the config {cfg.num_hosts}")
        self.ranks = list(range(cfg.num_hosts)) if ranks is None else list(ranks)
        if cfg.compressor == "retaining":
            if retaining_heads is None:
                raise ValueError("compressor 'retaining' needs RetainingHeads weights")
            if len(retaining_heads.layers) != model.cfg.num_layers:
                raise ValueError(f"retaining heads have {len(retaining_heads.layers)} layers, the model "
                                 f"{model.cfg.num_layers}")
        self.retaining_heads = retaining_heads
        self.hosts: list[Host] = []
        self.layout: ApbLayout | None = None

    # -- prefill ------------------------------------------------------------------------
    def _scores(self, layer: int, host: Host, q_pre, k_pre, v_pre, q, k) -> torch.Tensor:
        A, Lr = host.anchor_len, host.length
        lay = self.layout
        if self.cfg.compressor == "retaining":
            return self.retaining_heads.scores(layer, q_pre[A:], k_pre[A:], v_pre[A:])
        # Observing rows: the embedded query (or the anchor's last rows). Host 0 holds the
        # anchor's tokens as its own first rows, so it observes the same rows of its block.
        if lay.anchor_len > 0:
            a, b = lay.query_span or (max(0, lay.anchor_len - self.cfg.obs_len), lay.anchor_len)
            q_obs = q[a:b]
        else:
            q_obs = q[A + Lr - min(self.cfg.obs_len, Lr):]
        return query_aware_scores(q_obs, k[A:])

    @torch.no_grad()
    def prefill(self, context_ids: torch.Tensor, extra_capacity: int = 0,
                query_span: tuple[int, int] | None = None) -> torch.Tensor | None:
        """Run the context (1-D ids, the same on every rank) through all layers. Returns
        the final-normed hidden state of the context's last token on the last host (None
        on the others). `extra_capacity`: cache room the last host keeps for new tokens."""
        m, c, cfg = self.model, self.model.cfg, self.cfg
        n = int(context_ids.numel())
        self.layout = lay = plan_layout(n, cfg, query_span)
        dev = m.device
        ids = context_ids.to(dev)
        self.hosts = []
        for r in self.ranks:
            A, s, L = lay.anchor_of(r), lay.starts[r], lay.lengths[r]
            last = r == cfg.num_hosts - 1
            cap = L + (extra_capacity if last else 0)
            tok = torch.cat([ids[:A], ids[s:s + L]])
            pos = torch.cat([torch.arange(A, device=dev), torch.arange(s, s + L, device=dev)])
            self.hosts.append(Host(r, s, L, A, torch.empty(c.num_layers, 2, cap, c.num_kv_heads, c.head_dim,
                                                           dtype=m.dtype, device=dev),
                                   cache_len=L, is_last=last, x=F.embedding(tok, m.w["embed"]), positions=pos))
        P = lay.passing_len
        for i in range(c.num_layers):
            lw = m.w["layers"][i]
            staged, sent = [], []
            for host in self.hosts:
                q_pre, k_pre, v = m.qkv(lw, host.x)
                q, k = m.rope(q_pre, host.positions), m.rope(k_pre, host.positions)
                A = host.anchor_len
                if host.is_last or P == 0:  # nobody reads the last host's passing block
                    pkv = k.new_zeros(2, P, c.num_kv_heads, c.head_dim)
                else:
                    scores = self._scores(i, host, q_pre, k_pre, v, q, k)
                    pk, pv, _ = select_passing(k[A:], v[A:], scores, P)
                    pkv = torch.stack([pk, pv])
                host.cache[i, 0, :host.length] = k[A:]
                host.cache[i, 1, :host.length] = v[A:]
                staged.append((q, k, v))
                sent.append(pkv)
            gathered = self.comm.all_gather(sent)  # [H] x [2, P, Hkv, D]
            for host, (q, k, v) in zip(self.hosts, staged):
                r = host.rank
                if r > 0 and P > 0:
                    passing = torch.cat(gathered[:r], dim=1)  # [2, r * P, Hkv, D]
                    k = torch.cat([passing[0], k])
                    v = torch.cat([passing[1], v])
                out, _ = apb_attention(q, k.contiguous(), v.contiguous(), host.anchor_len, r * P if r > 0 else 0)
                host.x = m.finish_layer(lw, host.x, out)
        last = None
        for host in self.hosts:
            if host.is_last:
                last = rms_norm(host.x[-1:], m.w["norm"], c.rms_norm_eps)
            host.x = host.positions = None  # anchor and passing are dropped after prefill
        return last

    # -- decode -------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, position: int) -> torch.Tensor:
        """T new tokens (the query, or one generated token) at positions position..+T-1,
        the same on every rank. Returns the final-normed hidden states [T, hidden]."""
        m, c = self.model, self.model.cfg
        T = int(token_ids.numel())
        x = F.embedding(token_ids.to(m.device), m.w["embed"])
        pos = torch.arange(position, position + T, device=m.device)
        for i in range(c.num_layers):
            lw = m.w["layers"][i]
            q, k, v = m.qkv(lw, x)
            q, k = m.rope(q, pos), m.rope(k, pos)
            partial = []
            for host in self.hosts:
                n = host.cache_len
                kc, vc = host.cache[i, 0], host.cache[i, 1]
                if host.is_last:
                    if n + T > kc.shape[0]:
                        raise ValueError(f"the last host's cache ({kc.shape[0]}) cannot take {T} more tokens after {n}")
                    kc[n:n + T], vc[n:n + T] = k, v
                    o, lse = attention_with_lse(q, kc[:n + T], vc[:n + T], causal_offset=n)
                else:
                    o, lse = attention_with_lse(q, kc[:n], vc[:n])
                partial.append(torch.cat([o.float().flatten(1), lse], dim=1))  # one message per host
            parts = self.comm.all_gather(partial)
            D = c.head_dim
            out = lse = None
            for p in parts:
                po = p[:, :c.num_heads * D].view(T, c.num_heads, D).to(x.dtype)
                pl = p[:, c.num_heads * D:].contiguous()
                out, lse = (po, pl) if out is None else ops.merge_attention_states(out, lse, po, pl)
            x = m.finish_layer(lw, x, out)
        for host in self.hosts:
            if host.is_last:
                host.cache_len += T
        return rms_norm(x, m.w["norm"], c.rms_norm_eps)

    def _logits_from_last(self, hidden_last: torch.Tensor | None) -> torch.Tensor:
        """Logits [V] fp32 of the last host's last row, on every rank."""
        m = self.model
        if hidden_last is not None:
            logits = m.logits(hidden_last)[0].float()
        else:
            logits = torch.empty(m.cfg.vocab_size, dtype=torch.float32, device=m.device)
        return self.comm.broadcast_from_last(logits)

    @torch.no_grad()
    def generate(self, context_ids: list[int], max_new_tokens: int, *, query_ids: list[int] | None = None,
                 query_span: tuple[int, int] | None = None, stop_ids: tuple[int, ...] | None = None) -> "ApbResult":
        """Prefill `context_ids` with APB, then (optionally) the query after the context,
        then greedy decoding. Every rank returns the same tokens."""
        m = self.model
        stop = set(m.cfg.eos_token_ids if stop_ids is None else stop_ids)
        q_ids = list(query_ids or [])
        sync = (lambda: torch.cuda.synchronize(m.device)) if m.device.type == "cuda" else (lambda: None)
        comm0 = self.comm.seconds
        sync()
        t0 = time.perf_counter()
        hidden = self.prefill(torch.tensor(context_ids, dtype=torch.long), len(q_ids) + max_new_tokens + 1,
                              query_span)
        n = len(context_ids)
        if q_ids:
            h = self.step(torch.tensor(q_ids, dtype=torch.long), n)
            logits = m.logits(h[-1:])[0].float()
        else:
            logits = self._logits_from_last(hidden)
        sync()
        t1 = time.perf_counter()
        comm1 = self.comm.seconds
        first_logits = logits.cpu()
        tokens: list[int] = []
        pos = n + len(q_ids)
        while len(tokens) < max_new_tokens:
            tok = int(self.comm.broadcast_from_last(logits.argmax().view(1)))  # the last host decides
            tokens.append(tok)
            if tok in stop or len(tokens) == max_new_tokens:
                break
            logits = m.logits(self.step(torch.tensor([tok]), pos))[0].float()
            pos += 1
        sync()
        t2 = time.perf_counter()
        return ApbResult(tokens, first_logits, prefill_s=t1 - t0, decode_s=t2 - t1,
                         prefill_comm_s=comm1 - comm0, decode_comm_s=self.comm.seconds - comm1,
                         decode_steps=max(len(tokens) - 1, 0))


@dataclass
class ApbResult:
    tokens: list[int]
    first_logits: torch.Tensor  # logits that chose the first token (fp32, CPU)
    prefill_s: float
    decode_s: float
    prefill_comm_s: float
    decode_comm_s: float
    decode_steps: int


def simulate(model: LlamaModel, context_ids: list[int], cfg: ApbConfig, max_new_tokens: int, **kw) -> ApbResult:
    """Every host of the APB run in this process, one after another (reference / one device)."""
    retaining = kw.pop("retaining_heads", None)
    return ApbRunner(model, cfg, retaining_heads=retaining).generate(context_ids, max_new_tokens, **kw)
