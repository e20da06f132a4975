"""One tree-attention shape, a few launches, for a profiler (ncu / nsys) to look at:
python bench/profile_tree.py B N prefix [impl]."""
import sys

import torch

from frspec_cuda import tree
from frspec_cuda.benchmarks.tree import _case

B, N, prefix = (int(x) for x in sys.argv[1:4])
impl = sys.argv[4] if len(sys.argv) > 4 else "auto"
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v, cl, mask = _case(B, N, prefix, torch.device("cuda"), g)
for _ in range(3):
    tree.tree_attention(q, k, v, cl, mask, impl=impl, validate=False)
torch.cuda.synchronize()
