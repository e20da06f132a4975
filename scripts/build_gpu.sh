#!/usr/bin/env bash
# Build the CUDA extension and the bench executables HERE, against the GPU machine's torch,
# so the device run only tests and times. Needs a Python 3.12 venv with PyPI's
# torch==2.11.0 (CUDA 13, as on the lent H100) and nvcc 13:
#   PYENV_VERSION=3.12.1 python -m venv ~/gpu312 && ~/gpu312/bin/pip install torch==2.11.0 ninja
# Output: python/frspec_cuda/_C.so and build/gpu/bench/* (both git-ignored: name them in
# the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FRSPEC_GPU_VENV:-/work/venvs/gpu312}
export PATH="$VENV/bin:$PATH"
start=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DPython_EXECUTABLE="$VENV/bin/python" \
  -DFRSPEC_BUILD_CUDA=1 -DFRSPEC_BUILD_BENCH=ON >/dev/null
cmake --build build/gpu -j "$(nproc)"
cp build/gpu/_C.so python/frspec_cuda/_C.so
echo "built in $(( $(date +%s) - start )) s: python/frspec_cuda/_C.so, build/gpu/bench/"
