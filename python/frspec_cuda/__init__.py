"""frspec_cuda: CUDA kernels and a decoding loop for lossless speculative decoding
(FR-Spec, EAGLE-2 trees) and APB long-context prefill.

Every op runs its CUDA kernel on CUDA tensors when the kernels were built, and its
PyTorch reference (`frspec_cuda.reference`) on CPU tensors.
"""

from ._library import build_info, build_mode, has_kernel
from .ops import fr_lm_head_topk, merge_attention_states


def __getattr__(name):
    """The model / decoding entry points, imported on first use (they pull in more modules):
    `frspec_cuda.load_model(dir)`, `frspec_cuda.load_eagle(dir, target)`,
    `frspec_cuda.load_vocab(file)`, `frspec_cuda.SpeculativeGenerator(target, eagle=..., vocab=...)`."""
    lazy = {"load_model": ("models.llama", "load_model"), "load_eagle": ("models.eagle", "load_eagle"),
            "load_vocab": ("vocab", "load_vocab"), "SpeculativeGenerator": ("spec.engine", "SpeculativeGenerator")}
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'frspec_cuda' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = ["__version__", "build_info", "build_mode", "fr_lm_head_topk", "has_kernel",
           "merge_attention_states", "load_model", "load_eagle", "load_vocab", "SpeculativeGenerator"]
