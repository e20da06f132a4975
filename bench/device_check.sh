#!/usr/bin/env bash
# One call on the GPU machine: (optionally) build there, report the build, run the GPU
# tests, compute-sanitizer on the kernels, the bench executables and the Python
# benchmarks; details under $OUT, a short table last.
#   bench/device_check.sh            use the carried python/frspec_cuda/_C.so + build/gpu/bench
#   bench/device_check.sh --build    also time the documented pip install (CUDA mode) there
# Environment: TESTS (pytest paths, default tests), SUITES ("apb tree", default all), QUICK=1,
# NO_EXE=1 skips the bench executables and their sanitizer runs, NO_SANITIZE=1 the op sanitizer runs,
# TESTS=none the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
# Everything goes to $LOG; at the end it is packed into $OUT/details.tgz (the device tool
# brings back at most 8 files), with bench.json and summary.txt beside it.
OUT=${OUT:-/tmp/frspec_out}
LOG=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
summary=()
note() { summary+=("$1"); }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$LOG/gpu.txt"

if [ "${1:-}" = "--build" ]; then
  start=$(date +%s)
  if FRSPEC_BUILD_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps \
      --target /tmp/frspec_inst . >"$LOG/pip_build.log" 2>&1; then
    note "pip install (CUDA mode) on device: $(( $(date +%s) - start )) s"
    (cd /tmp && PYTHONPATH=/tmp/frspec_inst python3 -m frspec_cuda info) | tee "$LOG/info_pip.txt"
  else
    note "pip install (CUDA mode) on device FAILED (see pip_build.log)"; tail -20 "$LOG/pip_build.log"
  fi
fi

python3 -m frspec_cuda info | tee "$LOG/info.txt"
grep -q "build mode  *cuda$" "$LOG/info.txt" && note "frspec info: CUDA mode, kernels: $(grep 'CUDA kernels' "$LOG/info.txt" | sed 's/CUDA kernels *//')" || note "frspec info: NOT in CUDA mode"

if [ "${TESTS:-}" != none ]; then
  python3 -m pytest -q ${TESTS:-tests} -p no:cacheprovider 2>&1 | tee "$LOG/pytest.txt" | tail -15
  note "pytest: $(tail -1 "$LOG/pytest.txt")"
fi

for exe in build/gpu/bench/*_bench; do
  [ -x "$exe" ] && [ -z "${NO_EXE:-}" ] || continue
  name=$(basename "$exe")
  compute-sanitizer --tool memcheck --error-exitcode 9 "$exe" --quick >"$LOG/sanitizer_$name.txt" 2>&1
  note "compute-sanitizer memcheck $name: rc=$? $(grep -h 'ERROR SUMMARY' "$LOG/sanitizer_$name.txt")"
  "$exe" | tee "$LOG/$name.txt"
done

for tool in $([ -z "${NO_SANITIZE:-}" ] && echo memcheck racecheck); do
  timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/sanitize_ops.py >"$LOG/sanitizer_ops_$tool.txt" 2>&1
  note "compute-sanitizer $tool (every op, bench/sanitize_ops.py): rc=$? $(grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOG/sanitizer_ops_$tool.txt")"
done

python3 -m frspec_cuda bench ${SUITES:-} ${QUICK:+--quick} --json "$LOG/bench.json" 2>&1 | tee "$LOG/bench.txt"

cp "$LOG/bench.json" "$OUT/" 2>/dev/null
tar -czf "$OUT/details.tgz" -C "$LOG" .
{
echo; echo "==================== summary ===================="
for line in "${summary[@]}"; do echo "$line"; done
grep -hs "^FAILED" "$LOG/pytest.txt"
for f in "$LOG"/*_bench.txt; do [ -e "$f" ] || continue; case $f in *sanitizer_*) continue;; esac; echo "-- $(basename "$f" .txt)"; cat "$f"; done
echo "-- frspec bench"; grep -vE "^#" "$LOG/bench.txt"
} | tee "$OUT/summary.txt"
