"""Pure-PyTorch semantics of every frspec_cuda op: the specification the CUDA kernels
are tested against, and what runs on CPU tensors. One module per op family."""

from .lm_head_topk import fr_lm_head_topk
from .merge_states import merge_attention_states

__all__ = ["fr_lm_head_topk", "merge_attention_states"]
