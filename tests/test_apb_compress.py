"""APB compressor: max-pooling, query-aware scores against a brute-force loop, passing-block
selection, and loading retaining-head weights (shapes validated, errors name the field)."""

from __future__ import annotations

import pytest
import torch

from frspec_cuda.apb import compress


def test_pool_scores_is_a_sliding_max():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(23, 3, generator=g)
    out = compress.pool_scores(x, 5)
    for i in range(23):
        torch.testing.assert_close(out[i], x[max(0, i - 2): i + 3].max(0).values)
    assert torch.equal(compress.pool_scores(x, 1), x)


def test_query_aware_scores_brute_force():
    g = torch.Generator().manual_seed(1)
    n, Hq, Hkv, D, L = 3, 6, 2, 8, 17
    q = torch.randn(n, Hq, D, generator=g, dtype=torch.float64)
    k = torch.randn(L, Hkv, D, generator=g, dtype=torch.float64)
    got = compress.query_aware_scores(q, k, scale=0.5, kernel=1)
    want = torch.zeros(L, Hkv, dtype=torch.float64)
    for h in range(Hq):
        kv = h // (Hq // Hkv)
        for i in range(n):
            want[:, kv] += torch.softmax((k[:, kv] @ q[i, h]) * 0.5, 0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    pooled = compress.query_aware_scores(q, k, scale=0.5)
    torch.testing.assert_close(pooled, compress.pool_scores(got, 5))
    with pytest.raises(ValueError, match="at least one observing"):
        compress.query_aware_scores(q[:0], k)


def test_select_passing_keeps_the_best_in_order():
    g = torch.Generator().manual_seed(2)
    L, Hkv, D, P = 20, 3, 4, 6
    k = torch.randn(L, Hkv, D, generator=g)
    v = torch.randn(L, Hkv, D, generator=g)
    scores = torch.randn(L, Hkv, generator=g)
    pk, pv, idx = compress.select_passing(k, v, scores, P)
    for h in range(Hkv):
        best = sorted(scores[:, h].topk(P).indices.tolist())
        assert idx[:, h].tolist() == best
        assert torch.equal(pk[:, h], k[best, h]) and torch.equal(pv[:, h], v[best, h])
    pk, pv, idx = compress.select_passing(k, v, scores, L)
    assert torch.equal(pk, k) and torch.equal(pv, v)
    with pytest.raises(ValueError, match="passing_len 21"):
        compress.select_passing(k, v, scores, L + 1)


def _save_heads(path, layers, Hq, Hkv, D, R=32, seed=0, drop=None, bad=None):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    d_in = (Hq + 2 * Hkv) * D
    t = {}
    for i in range(layers):
        pre = f"model.layers.{i}.self_attn.retaining_head."
        t[pre + "fc1.weight"] = torch.randn(R, d_in, generator=g) * 0.1
        t[pre + "fc1.bias"] = torch.randn(R, generator=g)
        t[pre + "fc2.weight"] = torch.randn(Hkv, R, generator=g) * 0.1
        t[pre + "fc2.bias"] = torch.randn(Hkv, generator=g)
    if drop:
        del t[drop]
    if bad:
        t[bad] = torch.zeros(3, 3)
    save_file(t, str(path))
    return t


def test_retaining_heads_load_and_score(tmp_path):
    Hq, Hkv, D = 4, 2, 8
    raw = _save_heads(tmp_path / "heads.safetensors", 2, Hq, Hkv, D)
    heads = compress.RetainingHeads.load(tmp_path / "heads.safetensors", 2, Hq, Hkv, D)
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(9, Hq, D, generator=g), torch.randn(9, Hkv, D, generator=g), torch.randn(9, Hkv, D, generator=g)
    pre = "model.layers.1.self_attn.retaining_head."
    x = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], 1)
    h = torch.nn.functional.silu(x @ raw[pre + "fc1.weight"].T + raw[pre + "fc1.bias"])
    want = compress.pool_scores(h @ raw[pre + "fc2.weight"].T + raw[pre + "fc2.bias"], 5)
    torch.testing.assert_close(heads.scores(1, q, k, v), want)
    torch.save(raw, tmp_path / "heads.pt")  # the PyTorch format loads the same
    heads_pt = compress.RetainingHeads.load(tmp_path / "heads.pt", 2, Hq, Hkv, D)
    torch.testing.assert_close(heads_pt.scores(1, q, k, v), want)


def test_retaining_heads_errors(tmp_path):
    Hq, Hkv, D = 4, 2, 8
    with pytest.raises(FileNotFoundError):
        compress.RetainingHeads.load(tmp_path / "nope.safetensors", 2, Hq, Hkv, D)
    _save_heads(tmp_path / "a.safetensors", 2, Hq, Hkv, D, drop="model.layers.1.self_attn.retaining_head.fc2.bias")
    with pytest.raises(ValueError, match="layer 1 has no 'fc2.bias'"):
        compress.RetainingHeads.load(tmp_path / "a.safetensors", 2, Hq, Hkv, D)
    _save_heads(tmp_path / "b.safetensors", 2, Hq, Hkv, D)
    with pytest.raises(ValueError, match=r"layer 0 'fc1.weight' has shape \(32, 64\), expected \(32, 48\)"):
        compress.RetainingHeads.load(tmp_path / "b.safetensors", 2, Hq - 2, Hkv, D)
    with pytest.raises(ValueError, match="is for layer 1, the model has 1"):
        compress.RetainingHeads.load(tmp_path / "b.safetensors", 1, Hq, Hkv, D)
    with pytest.raises(ValueError, match="activation"):
        compress.RetainingHeads([], activation="swish2")
