"""Speculative decoding: drafting the dynamic tree, verification, the generation loop."""

from .engine import SpecStats, SpeculativeGenerator

__all__ = ["SpecStats", "SpeculativeGenerator"]
