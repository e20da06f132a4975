"""Pure-PyTorch semantics of every frspec_cuda op: the specification the CUDA kernels
are tested against, and what runs on CPU tensors. One module per op family."""

from .merge_states import merge_attention_states

__all__ = ["merge_attention_states"]
