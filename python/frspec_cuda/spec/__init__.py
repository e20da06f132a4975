"""Speculative decoding: drafting the dynamic tree, verification, the generation loop."""

from .engine import SpecStats, SpeculativeGenerator
from .sampling import generate_sample, target_probs

__all__ = ["SpecStats", "SpeculativeGenerator", "generate_sample", "target_probs"]
