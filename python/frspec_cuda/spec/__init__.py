"""Speculative decoding: drafting the dynamic tree, verification, the generation loop."""

from .engine import SpecStats, SpeculativeGenerator
from .autoregressive import AutoregressiveDecoder, generate_greedy, generate_sample
from .sampling import target_probs

__all__ = ["AutoregressiveDecoder", "SpecStats", "SpeculativeGenerator", "generate_greedy", "generate_sample",
           "target_probs"]
