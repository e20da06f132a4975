"""Model code shared by the engine, the drafts and APB."""

from .llama import CheckpointError, LlamaModel, ModelConfig, generate_greedy, load_model

__all__ = ["CheckpointError", "LlamaModel", "ModelConfig", "generate_greedy", "load_model"]
