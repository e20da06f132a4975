"""Pure-PyTorch semantics of every frspec_cuda op: the specification the CUDA kernels
are tested against, and what runs on CPU tensors. One module per op family."""

from .lm_head_topk import fr_lm_head_topk
from .merge_states import merge_attention_states
from .tree import (build_dynamic_tree, compact_kv_cache, tree_attention, verify_tree_greedy,
                   verify_tree_sampling)

__all__ = ["build_dynamic_tree", "compact_kv_cache", "fr_lm_head_topk", "merge_attention_states",
           "tree_attention", "verify_tree_greedy", "verify_tree_sampling"]
