#!/usr/bin/env bash
# Tuning builds of lm_head_topk_bench for the knobs in frspec/lm_head_topk.cuh:
# build/gpu/variants/lm_head_topk_bench_c<cols>_b<blocks per SM>[_<MACRO=value>], from
# arguments cols:blocks[:MACRO=value] (blocks 0 = per-NT default). Carry build/gpu/variants.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/gpu/variants
[ $# -gt 0 ] || set -- 128:2 256:1 64:2
for v in "$@"; do
  IFS=: read -r cols blocks extra <<<"$v"
  nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Icsrc/include -Ibench \
    -DFRSPEC_HEAD_GROUP_COLS=$cols -DFRSPEC_HEAD_BLOCKS_PER_SM=$blocks ${extra:+-D$extra} \
    bench/lm_head_topk_bench.cu csrc/kernels/lm_head_topk.cu \
    -o build/gpu/variants/lm_head_topk_bench_c${cols}_b${blocks}${extra:+_$extra} &
done
wait
ls build/gpu/variants
