"""Input checks shared by the references (the CUDA binding repeats them in C++)."""

from __future__ import annotations

import torch


def check_tensors_on_one_device(**tensors: object) -> None:
    """Every argument is a tensor, all on the device of the first one."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
