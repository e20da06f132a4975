"""Finding and loading the compiled kernels (frspec_cuda._C) and describing the build.

The extension is a plain shared library that registers `torch.ops.frspec_cuda.*`
through TORCH_LIBRARY; it is loaded with `torch.ops.load_library`, so it carries no
Python C API and one file serves every Python version. Where it is absent (reference
mode) every op still works on CPU tensors through its PyTorch reference.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent
# Set FRSPEC_CUDA_LIB to load a library from elsewhere (e.g. a build directory).
_ENV_LIB = "FRSPEC_CUDA_LIB"

BUILD_HELP = (
    "Build the kernels on a machine whose torch has CUDA and that has nvcc: "
    "`pip install scikit-build-core ninja && FRSPEC_BUILD_CUDA=1 pip install "
    "--no-build-isolation .` in the frspec_cuda checkout (see README, 'Building')."
)


def _find_library() -> Path | None:
    if os.environ.get(_ENV_LIB):
        return Path(os.environ[_ENV_LIB])
    found = sorted(glob.glob(str(_PACKAGE_DIR / "_C*.so")))
    return Path(found[0]) if found else None


def _load() -> tuple[Path | None, str | None]:
    path = _find_library()
    if path is None:
        return None, None
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as exc:  # wrong torch/CUDA version, missing driver...
        return path, f"{type(exc).__name__}: {exc}"
    return path, None


LIBRARY_PATH, LOAD_ERROR = _load()
LOADED = LIBRARY_PATH is not None and LOAD_ERROR is None
# Ops with a CUDA kernel, read from the dispatcher once: a plain set lookup is cheap on
# every call and traceable by torch.compile (a dispatcher query is neither).
CUDA_KERNELS = frozenset(
    name.split("::", 1)[1].split(".", 1)[0]
    for name in (torch._C._dispatch_get_registrations_for_dispatch_key("CUDA") if LOADED else [])
    if name.startswith("frspec_cuda::")
)


def build_mode() -> str:
    if LOADED:
        return "cuda"
    if LIBRARY_PATH is not None:
        return "cuda (library failed to load)"
    return "reference"


def build_info() -> dict:
    """What the loaded library was compiled with (archs, CUDA runtime, torch)."""
    if not LOADED:
        return {}
    return json.loads(torch.ops.frspec_cuda.build_info())


def has_kernel(op: str) -> bool:
    """True if `torch.ops.frspec_cuda.<op>` has a CUDA implementation loaded."""
    return op in CUDA_KERNELS


def require_kernel(op: str) -> None:
    """Raise a clear error when a CUDA tensor reaches an op whose kernel is not built."""
    if has_kernel(op):
        return
    if LOAD_ERROR is not None:
        raise RuntimeError(
            f"frspec_cuda: the CUDA kernel library {LIBRARY_PATH} failed to load "
            f"({LOAD_ERROR}), so `{op}` cannot run on CUDA tensors. Rebuild it against "
            f"this torch ({torch.__version__}). {BUILD_HELP}"
        )
    if not LOADED:
        raise RuntimeError(
            f"frspec_cuda was installed in reference mode (no CUDA kernels), so `{op}` "
            f"cannot run on CUDA tensors; move the inputs to the CPU to use the PyTorch "
            f"reference, or {BUILD_HELP[0].lower()}{BUILD_HELP[1:]}"
        )
    raise RuntimeError(
        f"frspec_cuda: the loaded library {LIBRARY_PATH} has no CUDA kernel for `{op}` "
        f"(built from an older checkout?). {BUILD_HELP}"
    )
