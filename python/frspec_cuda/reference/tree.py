"""References for the EAGLE-2 tree machinery: building the dynamic draft tree, tree
attention over the KV cache, greedy and lossless-sampling verification, KV compaction.

Conventions (batch-first everywhere; every sequence b has its own cache length):
- A tree has N nodes; node 0 is the root (the last committed token, already in the
  cache's past), every other node's parent has a smaller index.
- `mask` [B, N, W] int64 (W = ceil(N / 64)): bit j of word j // 64 of row i is set when
  node j is node i or one of its ancestors (little-endian bit order within a word).
- The tree's keys/values live at cache slots cache_len[b] + node, right after the prefix.
"""

from __future__ import annotations

import math

import torch

MAX_TREE_NODES = 1024
MAX_HISTORY = 4096


def mask_words(num_nodes: int) -> int:
    return (num_nodes + 63) // 64


def _as_int64_bits(word: int) -> int:
    """A 64-bit pattern stored in an int64 tensor element."""
    return word - (1 << 64) if word >= (1 << 63) else word


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """parents [B, N] (-1 for the root) -> packed ancestor-or-self mask [B, N, W] int64."""
    B, N = parents.shape
    W = mask_words(N)
    out = torch.zeros(B, N, W, dtype=torch.int64)
    p = parents.cpu().tolist()
    for b in range(B):
        bits = [0] * N
        for i in range(N):
            bits[i] = (bits[p[b][i]] if p[b][i] >= 0 else 0) | (1 << i)
        for i in range(N):
            for w in range(W):
                out[b, i, w] = _as_int64_bits((bits[i] >> (64 * w)) & ((1 << 64) - 1))
    return out.to(parents.device)


def unpack_mask(mask: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """[B, N, W] int64 -> [B, N, N] bool (row i: which nodes node i may attend to)."""
    shifts = torch.arange(64, device=mask.device)
    bits = (mask.unsqueeze(-1) >> shifts) & 1  # [B, N, W, 64]
    return bits.flatten(-2)[..., :num_nodes].bool()


def history_depths(parents: torch.Tensor) -> torch.Tensor:
    """Depth (root children = 1) of every history candidate; parents[b, i] < i or -1."""
    B, M = parents.shape
    p = parents.cpu().tolist()
    depth = [[0] * M for _ in range(B)]
    for b in range(B):
        for i in range(M):
            depth[b][i] = 1 if p[b][i] < 0 else depth[b][p[b][i]] + 1
    return torch.tensor(depth, dtype=torch.int32, device=parents.device)


def check_history(hist_tokens, hist_parents, hist_scores, root_tokens, cache_len, num_nodes) -> None:
    if hist_tokens.dim() != 2 or hist_parents.shape != hist_tokens.shape or hist_scores.shape != hist_tokens.shape:
        raise ValueError(
            "hist_tokens, hist_parents, hist_scores must all be [batch, history], got "
            f"{tuple(hist_tokens.shape)}, {tuple(hist_parents.shape)}, {tuple(hist_scores.shape)}"
        )
    B, M = hist_tokens.shape
    if root_tokens.shape != (B,) or cache_len.shape != (B,):
        raise ValueError(f"root_tokens and cache_len must be [batch={B}], got {tuple(root_tokens.shape)}, {tuple(cache_len.shape)}")
    if not 2 <= num_nodes <= MAX_TREE_NODES:
        raise ValueError(f"num_nodes must be in [2, {MAX_TREE_NODES}], got {num_nodes}")
    if M < num_nodes - 1 or M > MAX_HISTORY:
        raise ValueError(f"history must hold between num_nodes-1={num_nodes - 1} and {MAX_HISTORY} candidates, got {M}")
    idx = torch.arange(M, device=hist_parents.device)
    bad = (hist_parents < -1) | (hist_parents >= idx)
    if bool(bad.any()):
        b, i = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"hist_parents[{b}, {i}] = {int(hist_parents[b, i])}: a parent must be -1 (the root) or an earlier candidate (< {i})")


def build_dynamic_tree(hist_tokens, hist_parents, hist_scores, root_tokens, cache_len, num_nodes: int):
    """Select the root plus the num_nodes - 1 best drafting candidates.

    hist_*: [B, M] per candidate: token, parent candidate (-1 = child of the root),
    cumulative log-probability. Candidates are ranked by (score desc, depth asc, index asc);
    a parent scores >= its children and is shallower, so it always ranks first and the
    selection is closed under ancestors, and sorting nodes in rank order puts every parent
    before its children. Returns a dict of [B, N] tensors: tokens (int64), parents (int32,
    -1 for the root), depth (int32), positions (int64, cache_len + depth), history_index
    (int32, -1 for the root) and mask [B, N, W] int64.
    """
    check_history(hist_tokens, hist_parents, hist_scores, root_tokens, cache_len, num_nodes)
    B, M = hist_tokens.shape
    N = num_nodes
    depth = history_depths(hist_parents)
    out = {k: [] for k in ("tokens", "parents", "depth", "history_index")}
    scores = hist_scores.float().cpu().tolist()
    par = hist_parents.cpu().tolist()
    dep = depth.cpu().tolist()
    for b in range(B):
        order = sorted(range(M), key=lambda i: (-scores[b][i], dep[b][i], i))[: N - 1]
        node_of = {h: n + 1 for n, h in enumerate(order)}
        out["tokens"].append([int(root_tokens[b])] + [int(hist_tokens[b, h]) for h in order])
        out["parents"].append([-1] + [0 if par[b][h] < 0 else node_of[par[b][h]] for h in order])
        out["depth"].append([0] + [dep[b][h] for h in order])
        out["history_index"].append([-1] + order)
    dev = hist_tokens.device
    tree = dict(
        tokens=torch.tensor(out["tokens"], dtype=torch.int64, device=dev),
        parents=torch.tensor(out["parents"], dtype=torch.int32, device=dev),
        depth=torch.tensor(out["depth"], dtype=torch.int32, device=dev),
        history_index=torch.tensor(out["history_index"], dtype=torch.int32, device=dev),
    )
    tree["positions"] = cache_len.to(device=dev, dtype=torch.int64).unsqueeze(1) + tree["depth"]
    tree["mask"] = ancestor_mask(tree["parents"])
    return tree


def check_tree(tokens, parents, name="tree") -> None:
    if tokens.dim() != 2 or parents.shape != tokens.shape:
        raise ValueError(f"tokens and parents must both be [batch, nodes], got {tuple(tokens.shape)} and {tuple(parents.shape)}")
    N = tokens.shape[1]
    if not 1 <= N <= MAX_TREE_NODES:
        raise ValueError(f"a {name} must have 1..{MAX_TREE_NODES} nodes, got {N}")
    idx = torch.arange(N, device=parents.device)
    bad = (parents[:, 1:] < 0) | (parents[:, 1:] >= idx[1:])
    if bool(bad.any()) or bool((parents[:, 0] != -1).any()):
        raise ValueError(f"{name} parents must be -1 for node 0 and in [0, i) for node i > 0")


def _path_to(parents_b: list[int], node: int) -> list[int]:
    path = [node]
    while parents_b[path[-1]] >= 0:
        path.append(parents_b[path[-1]])
    return path[::-1]


def verify_tree_greedy(tokens, parents, target_argmax):
    """Greedy verification. Node i > 0 is correct when tokens[i] equals the target's argmax
    at its parent; the accepted path ends at the deepest node whose ancestors are all
    correct (lowest index among equals). Returns accept_len [B] int32 (nodes on the path,
    root included), accepted [B, N] int32 (path node indices, -1 padded) and bonus [B]
    int64 (the target's argmax at the last accepted node)."""
    check_tree(tokens, parents)
    if target_argmax.shape != tokens.shape:
        raise ValueError(f"target_argmax must be [batch, nodes] = {tuple(tokens.shape)}, got {tuple(target_argmax.shape)}")
    B, N = tokens.shape
    accept_len = torch.zeros(B, dtype=torch.int32)
    accepted = torch.full((B, N), -1, dtype=torch.int32)
    bonus = torch.zeros(B, dtype=torch.int64)
    t, p, a = tokens.cpu().tolist(), parents.cpu().tolist(), target_argmax.cpu().tolist()
    for b in range(B):
        ok = [True] + [False] * (N - 1)
        best, best_depth = 0, 0
        depth = [0] * N
        for i in range(1, N):
            depth[i] = depth[p[b][i]] + 1
            ok[i] = ok[p[b][i]] and t[b][i] == a[b][p[b][i]]
            if ok[i] and depth[i] > best_depth:
                best, best_depth = i, depth[i]
        path = _path_to(p[b], best)
        accept_len[b] = len(path)
        accepted[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        bonus[b] = a[b][best]
    dev = tokens.device
    return accept_len.to(dev), accepted.to(dev), bonus.to(dev)


def verify_tree_sampling(tokens, parents, probs, uniforms):
    """Lossless verification of top-k drafts by the target alone.

    probs [B, N, V]: the target's distribution at every node (after temperature / top-p /
    top-k). uniforms [B, N] in (0, 1]: uniforms[b, d] decides level d. At the current node
    the children are tried in index order: child j is accepted when u <= p(t_1) + ... +
    p(t_j) (a token repeated among siblings counts once, at its first child). If none is,
    the bonus is the token where the remaining mass, over the vocabulary in id order with
    the tried tokens removed, first reaches u - sum_j p(t_j) — i.e. a sample from p with the
    tried tokens removed, renormalised. Together this samples each emitted token from p
    exactly, so the output distribution is the target's whatever the draft proposed.
    At a leaf the bonus is a plain sample from p with the level's uniform.
    Returns (accept_len, accepted, bonus) like `verify_tree_greedy`."""
    check_tree(tokens, parents)
    B, N = tokens.shape
    if probs.dim() != 3 or probs.shape[:2] != (B, N):
        raise ValueError(f"probs must be [batch, nodes, vocab] = [{B}, {N}, V], got {tuple(probs.shape)}")
    if uniforms.shape != (B, N):
        raise ValueError(f"uniforms must be [batch, nodes] = [{B}, {N}], got {tuple(uniforms.shape)}")
    accept_len = torch.zeros(B, dtype=torch.int32)
    accepted = torch.full((B, N), -1, dtype=torch.int32)
    bonus = torch.zeros(B, dtype=torch.int64)
    t, p = tokens.cpu().tolist(), parents.cpu().tolist()
    pr = probs.detach().double().cpu()
    u_all = uniforms.double().cpu().tolist()
    for b in range(B):
        children = [[] for _ in range(N)]
        for i in range(1, N):
            children[p[b][i]].append(i)
        cur, path, d = 0, [0], 0
        while True:
            u = u_all[b][d]
            cum, tried, chosen = 0.0, [], None
            for c in children[cur]:
                tok = t[b][c]
                if tok in tried:
                    continue
                tried.append(tok)
                cum += float(pr[b, cur, tok])
                if u <= cum:
                    chosen = c
                    break
            if chosen is None:
                bonus[b] = _sample_residual(pr[b, cur], tried, u - cum)
                break
            path.append(chosen)
            cur, d = chosen, d + 1
        accept_len[b] = len(path)
        accepted[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
    dev = tokens.device
    return accept_len.to(dev), accepted.to(dev), bonus.to(dev)


def _sample_residual(p: torch.Tensor, tried: list[int], r: float) -> int:
    """Smallest token v (tried tokens removed) whose cumulative mass reaches r > 0 (such a v
    always has mass); if rounding leaves r above the total, the last untried token with
    mass."""
    q = p.clone()
    if tried:
        q[torch.tensor(tried)] = 0
    hit = torch.nonzero(torch.cumsum(q, 0) >= r)
    if len(hit):
        return int(hit[0])
    nz = torch.nonzero(q > 0)
    return int(nz[-1]) if len(nz) else 0


def compact_kv_cache(kv_cache, cache_len, accepted, accept_len) -> None:
    """In place: for every layer and K/V, move the accepted nodes' entries from slots
    cache_len + accepted[b, i] to cache_len + i (i < accept_len[b]), then
    cache_len += accept_len. kv_cache: [layers, 2, B, L_max, H_kv, D]."""
    if kv_cache.dim() != 6 or kv_cache.shape[1] != 2:
        raise ValueError(f"kv_cache must be [layers, 2, batch, max_len, kv_heads, head_dim], got {tuple(kv_cache.shape)}")
    B, L = kv_cache.shape[2], kv_cache.shape[3]
    if cache_len.shape != (B,) or accept_len.shape != (B,) or accepted.dim() != 2 or accepted.shape[0] != B:
        raise ValueError("cache_len and accept_len must be [batch], accepted [batch, nodes]")
    for b in range(B):
        n, base = int(accept_len[b]), int(cache_len[b])
        nodes = accepted[b, :n].long()
        if n < 1 or bool((nodes < 0).any()) or base + int(nodes.max()) >= L:
            raise ValueError(f"sequence {b}: accepted nodes {nodes.tolist()} at cache_len {base} do not fit max_len {L}")
        src = kv_cache[:, :, b, base + nodes].clone()
        kv_cache[:, :, b, base : base + n] = src
    cache_len += accept_len.to(cache_len.dtype)


def tree_attention(q, k_cache, v_cache, cache_len, mask, scale: float | None = None, tree_len: int | None = None):
    """Attention of the N tree queries over the committed prefix (all of it) and the tree
    nodes their mask allows. q [B, N, Hq, D]; k_cache, v_cache [B, L_max, Hkv, D] with the
    tree's keys at cache_len[b] + node; GQA (Hq a multiple of Hkv). The tree has `tree_len`
    nodes (default N); q holds the last N of them (a drafting level: the earlier levels'
    keys are already in the cache), and mask [B, N, ceil(tree_len / 64)] says which nodes
    each query sees. Returns out [B, N, Hq, D] (dtype of q) and lse [B, N, Hq] fp32
    (natural log)."""
    B, N, Hq, D = q.shape
    T = N if tree_len is None else int(tree_len)
    Hkv = k_cache.shape[2]
    if Hq % Hkv:
        raise ValueError(f"query heads {Hq} must be a multiple of kv heads {Hkv}")
    if T < N:
        raise ValueError(f"tree_len {T} is smaller than the {N} queries")
    scale = 1 / math.sqrt(D) if scale is None else scale
    allowed_tree = unpack_mask(mask, T)  # [B, N, T]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty_like(q)
    lse = torch.empty(B, N, Hq, dtype=torch.float64 if acc == torch.float64 else torch.float32, device=q.device)
    for b in range(B):
        L = int(cache_len[b])
        k = k_cache[b, : L + T].to(acc).repeat_interleave(Hq // Hkv, dim=1)  # [L+T, Hq, D]
        v = v_cache[b, : L + T].to(acc).repeat_interleave(Hq // Hkv, dim=1)
        s = torch.einsum("nhd,khd->hnk", q[b].to(acc), k) * scale  # [Hq, N, L+T]
        allowed = torch.cat([torch.ones(N, L, dtype=torch.bool, device=q.device), allowed_tree[b]], dim=1)
        s = s.masked_fill(~allowed, float("-inf"))
        lse_b = torch.logsumexp(s, dim=-1)  # [Hq, N]
        o = torch.einsum("hnk,khd->nhd", torch.exp(s - lse_b.unsqueeze(-1)), v)
        out[b] = o.to(q.dtype)
        lse[b] = lse_b.T
    return out, lse
