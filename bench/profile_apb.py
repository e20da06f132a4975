"""One APB host-attention launch shape for a profiler: python bench/profile_apb.py layout host [impl]."""
import sys

import torch

from frspec_cuda.apb import apb_attention
from frspec_cuda.benchmarks.apb import D, HKV, HQ, LAYOUTS

name, host = sys.argv[1], int(sys.argv[2])
impl = sys.argv[3] if len(sys.argv) > 3 else "auto"
L, A_host, P_host = LAYOUTS[name]
A, P = (0, 0) if host == 0 else (A_host, host * P_host)
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(A + L, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
k = torch.randn(P + A + L, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
v = torch.randn(P + A + L, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g)
for _ in range(2):
    apb_attention(q, k, v, A, P, impl=impl)
torch.cuda.synchronize()
