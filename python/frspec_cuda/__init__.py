"""frspec_cuda: CUDA kernels and a decoding loop for lossless speculative decoding
(FR-Spec, EAGLE-2 trees) and APB long-context prefill.

Every op runs its CUDA kernel on CUDA tensors when the kernels were built, and its
PyTorch reference (`frspec_cuda.reference`) on CPU tensors.
"""

from ._library import build_info, build_mode, has_kernel
from .ops import fr_lm_head_topk, merge_attention_states

__version__ = "0.1.0"

__all__ = ["__version__", "build_info", "build_mode", "fr_lm_head_topk", "has_kernel",
           "merge_attention_states"]
