#!/usr/bin/env bash
# One call on the GPU machine: (optionally) build there, report the build, run the GPU
# tests, compute-sanitizer on the kernels, the bench executables and the Python
# benchmarks; details under $OUT, a short table last.
#   bench/device_check.sh            use the carried python/frspec_cuda/_C.so + build/gpu/bench
#   bench/device_check.sh --build    also time the documented pip install (CUDA mode) there
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/frspec_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
summary=()
note() { summary+=("$1"); }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

if [ "${1:-}" = "--build" ]; then
  start=$(date +%s)
  if FRSPEC_BUILD_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps \
      --target /tmp/frspec_inst . >"$OUT/pip_build.log" 2>&1; then
    note "pip install (CUDA mode) on device: $(( $(date +%s) - start )) s"
    (cd /tmp && PYTHONPATH=/tmp/frspec_inst python3 -m frspec_cuda info) | tee "$OUT/info_pip.txt"
  else
    note "pip install (CUDA mode) on device FAILED (see pip_build.log)"; tail -20 "$OUT/pip_build.log"
  fi
fi

python3 -m frspec_cuda info | tee "$OUT/info.txt"
grep -q "build mode  *cuda$" "$OUT/info.txt" && note "frspec info: CUDA mode, kernels: $(grep 'CUDA kernels' "$OUT/info.txt" | sed 's/CUDA kernels *//')" || note "frspec info: NOT in CUDA mode"

python3 -m pytest -q tests -p no:cacheprovider 2>&1 | tee "$OUT/pytest.txt" | tail -15
note "pytest: $(tail -1 "$OUT/pytest.txt")"

for exe in build/gpu/bench/*_bench; do
  [ -x "$exe" ] || continue
  name=$(basename "$exe")
  compute-sanitizer --tool memcheck --error-exitcode 9 "$exe" --quick >"$OUT/sanitizer_$name.txt" 2>&1
  note "compute-sanitizer memcheck $name: rc=$? $(grep -h 'ERROR SUMMARY' "$OUT/sanitizer_$name.txt")"
  "$exe" | tee "$OUT/$name.txt"
done

python3 -m frspec_cuda bench --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"

echo; echo "==================== summary ===================="
for line in "${summary[@]}"; do echo "$line"; done
for f in "$OUT"/*_bench.txt; do echo "-- $(basename "$f" .txt)"; cat "$f"; done
echo "-- frspec bench"; grep -vE "^#" "$OUT/bench.txt"
