"""Run every frspec_cuda op once on small odd-sized inputs (for compute-sanitizer:
`compute-sanitizer --tool memcheck python3 bench/sanitize_ops.py`)."""

import os

import torch

import frspec_cuda
from frspec_cuda import tree
from frspec_cuda.reference import tree as ref

dev = "cuda"
g = torch.Generator().manual_seed(0)
B, N, M, V = 2, 37, 90, 1000
parents_h = torch.tensor([[-1] * 5 + [int(torch.randint(0, i, (1,), generator=g)) for i in range(5, M)]] * B,
                         dtype=torch.int32)
t = tree.build_dynamic_tree(torch.randint(0, V, (B, M), generator=g).to(dev), parents_h.to(dev),
                            (-torch.rand(B, M, generator=g).cumsum(1)).to(dev), torch.tensor([1, 2], device=dev),
                            torch.tensor([3, 50], dtype=torch.int32, device=dev), N)
v = tree.verify_tree_greedy(t.tokens, t.parents, torch.randint(0, V, (B, N), device=dev))
probs = torch.softmax(torch.randn(B, N, V, device=dev), -1)
s = tree.verify_tree_sampling(t.tokens, t.parents, probs, generator=torch.Generator(device=dev).manual_seed(0))
kv = torch.randn(3, 2, B, 128, 3, 64, device=dev, dtype=torch.bfloat16)
cl = torch.tensor([3, 50], dtype=torch.int32, device=dev)
tree.compact_kv_cache(kv, cl, s.accepted, s.accept_len)
q = torch.randn(B, N, 6, 128, device=dev, dtype=torch.bfloat16)
k = torch.randn(B, 200, 2, 128, device=dev, dtype=torch.bfloat16)
for splits in (1, 3, 4):  # decode: 3 and 4 = one cluster per KV head; MMA: split + merge
    tree.tree_attention(q, k, torch.randn_like(k), cl, t.mask, num_splits=splits)
    tree.tree_attention(q[:, :1].contiguous(), k, torch.randn_like(k), cl, t.mask[:, :1].contiguous(),
                        num_splits=splits, impl="mma")  # one-node tree: the decode kernel
for impl in ("mma", "auto"):  # the last 5 of the 37 nodes (a drafting level), and the last one
    tree.tree_attention(q[:, -5:].contiguous(), k, torch.randn_like(k), cl, t.mask[:, -5:].contiguous(), impl=impl,
                        tree_len=N)
    tree.tree_attention(q[:, -1:].contiguous(), k, torch.randn_like(k), cl, t.mask[:, -1:].contiguous(), impl=impl,
                        tree_len=N)
k2 = torch.randn(B, 1024, 2, 128, device=dev, dtype=torch.bfloat16)
tree.tree_attention(q[:, :1].contiguous(), k2, torch.randn_like(k2), cl, t.mask[:, :1].contiguous(),
                    num_splits=9, impl="mma")  # decode with more splits than a cluster: partials + merge kernel
if torch.cuda.get_device_capability() == (9, 0):  # the wgmma kernel: one split, a cluster of 3, partials
    qw = torch.randn(B, q.shape[1], 24, 128, device=dev, dtype=torch.bfloat16)  # G = 12: 2 row tiles
    kw = torch.randn(B, 1200, 2, 128, device=dev, dtype=torch.bfloat16)  # 10 key tiles: 9 splits fit
    for splits in (1, 3, 9):
        tree.tree_attention(qw, kw, torch.randn_like(kw), cl, t.mask, num_splits=splits, impl="wgmma")
    os.environ["FRSPEC_TREE_KEYS"] = "176"  # 176-key tiles
    for splits in (1, 3, 7):
        tree.tree_attention(qw, kw, torch.randn_like(kw), cl, t.mask, num_splits=splits, impl="wgmma")
    del os.environ["FRSPEC_TREE_KEYS"]
    qw, kw = qw[..., :64].contiguous(), kw[..., :64].contiguous()  # head_dim 64
    for splits in (1, 3, 9):
        tree.tree_attention(qw, kw, torch.randn_like(kw), cl, t.mask, num_splits=splits, impl="wgmma")
o = torch.randn(7, 3, 80, device=dev, dtype=torch.float16)
frspec_cuda.merge_attention_states(o, torch.randn(7, 3, device=dev), o, torch.randn(7, 3, device=dev))
frspec_cuda.fr_lm_head_topk(torch.randn(5, 72, device=dev, dtype=torch.bfloat16),
                            torch.randn(301, 72, device=dev, dtype=torch.bfloat16),
                            torch.arange(301, device=dev, dtype=torch.int32), 7)
from frspec_cuda.apb import apb_attention  # noqa: E402

for A, L, P, Dh in ((5, 200, 77, 128), (130, 3, 9, 64)):
    qa = torch.randn(A + L, 8, Dh, device=dev, dtype=torch.bfloat16)
    ka = torch.randn(P + A + L, 2, Dh, device=dev, dtype=torch.bfloat16)
    for impl in ("mma", "auto") if Dh == 64 else ("mma", "wgmma", "wgmma_ws", "wgmma_pingpong_windows", "auto"):
        apb_attention(qa, ka, torch.randn_like(ka), A, P, impl=impl)
from frspec_cuda import decoder  # noqa: E402

xs = torch.randn(3, 4095, device=dev, dtype=torch.bfloat16)
ws = torch.randn(4095, device=dev, dtype=torch.bfloat16)
decoder.rms_norm(xs, ws, 1e-5)
decoder.add_rms_norm(xs, xs, ws, 1e-5)
decoder.add_rms_norm(xs[:, :4088].contiguous(), xs[:, :4088].contiguous(), ws[:4088], 1e-5)  # 16-byte path
decoder.silu_and_mul(torch.randn(5, 2 * 1037, device=dev, dtype=torch.float16))
decoder.silu_and_mul(torch.randn(5, 2 * 1024, device=dev, dtype=torch.bfloat16))
kc, vc = torch.randn(2, B, 40, 2, 64, device=dev, dtype=torch.bfloat16).unbind(0)
slots = torch.tensor([[0, 39, 40, -1, 7], [1, 2, 3, 4, 5]], device=dev)
decoder.rope_qk_store_kv(torch.randn(B, 5, (6 + 4) * 64, device=dev, dtype=torch.bfloat16), slots.abs(),
                         torch.rand(32, device=dev), slots, kc, vc, 6)
for N, K in ((7, 24), (300, 4104)):  # partial warps / rows, bias
    wg = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
    decoder.gemv(torch.randn(1, K, device=dev, dtype=torch.bfloat16), wg, torch.randn(N, device=dev,
                                                                                   dtype=torch.bfloat16))
decoder.gemv_silu_and_mul(torch.randn(1, 1016, device=dev, dtype=torch.float16),
                          torch.randn(2 * 37, 1016, device=dev, dtype=torch.float16))
xn = torch.randn(1, 1016, device=dev, dtype=torch.bfloat16)
decoder.rms_norm_linear(xn, torch.randn_like(xn), torch.randn(1016, device=dev, dtype=torch.bfloat16), 1e-5,
                        torch.randn(2 * 45, 1016, device=dev, dtype=torch.bfloat16), silu_and_mul=True)
decoder.rms_norm_linear(xn, None, torch.randn(1016, device=dev, dtype=torch.bfloat16), 1e-5,
                        torch.randn(45, 1016, device=dev, dtype=torch.bfloat16), torch.randn(45, device=dev,
                                                                                          dtype=torch.bfloat16))
torch.cuda.synchronize()
print("sanitize_ops: all ops ran")
