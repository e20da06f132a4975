"""APB (Huang et al., ACL 2025): long-context prefill split across hosts, each attending to
[anchor | compressed passing blocks of earlier hosts | its own block], then Star-style
decoding that merges every host's partial attention.

- `apb_attention`: one host's attention (CUDA kernel + PyTorch reference), out and LSE.
- `compress`: retaining heads / query-aware scoring and passing-block selection.
- `host`: the algorithm (`ApbRunner`), its single-process simulation (`simulate`).
- `distributed`: the same on torch.distributed (one host per rank; `torchrun`).
"""

from .attention import apb_attention, attention_flops, attention_with_lse
from .compress import RetainingHeads, query_aware_scores, select_passing
from .host import ApbConfig, ApbLayout, ApbResult, ApbRunner, embed_query, plan_layout, simulate

__all__ = ["apb_attention", "attention_flops", "attention_with_lse", "RetainingHeads", "query_aware_scores",
           "select_passing", "ApbConfig", "ApbLayout", "ApbResult", "ApbRunner", "embed_query", "plan_layout",
           "simulate"]
