#!/usr/bin/env bash
# APB across the GPUs of one host (issue #6): torchrun prefill of a Llama-3-8B-shape model
# (random bf16 weights) at 32K / 64K / 128K over all local GPUs, 64 greedy decode steps
# with the Star-style merge, and in the same run a full causal prefill on one GPU (SDPA
# flash) and a ring-attention prefill over the same GPUs. One JSON line per context in
# $OUT/apb_multi_gpu.jsonl, a table last.
#   bench/apb_multi_gpu.sh [contexts...]      (default: 32768 65536 131072)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/frspec_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
# NVLink multicast stays off on these machines (device README)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
NGPU=$(nvidia-smi --list-gpus | wc -l)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi topo -m 2>/dev/null | head -5
contexts=${*:-32768 65536 131072}
for n in $contexts; do
  reps=1
  timeout 280 torchrun --standalone --nproc-per-node "$NGPU" -m frspec_cuda.apb.distributed --config llama3-8b \
    --context-len "$n" --new-tokens 65 --full-baseline --ring-baseline --star-baseline --repeats $reps \
    --json "$OUT/apb_multi_gpu.jsonl" 2>&1 | grep -vE "^W1|^\*+$|OMP_NUM_THREADS" | tail -5
done
python3 - "$OUT/apb_multi_gpu.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'ctx':>7} {'gpus':>4} {'anchor':>6} {'pass':>5} {'apb s':>7} {'tok/s':>8} {'coll s':>7} "
      f"{'full s':>7} {'x full':>6} {'ring s':>7} {'x ring':>6} {'star s':>7} {'x star':>6} {'dec ms':>7} {'dec coll ms':>11}")
for r in rows:
    print(f"{r['context_len']:>7} {r['world']:>4} {r['anchor_len']:>6} {r['passing_len']:>5} {r['prefill_s']:7.3f} "
          f"{r['prefill_tok_s']:8.0f} {r['prefill_comm_s']:7.3f} {r.get('full_prefill_s', float('nan')):7.3f} "
          f"{r.get('speedup_vs_full', float('nan')):6.2f} {r.get('ring_prefill_s', float('nan')):7.3f} "
          f"{r.get('speedup_vs_ring', float('nan')):6.2f} {r.get('star_prefill_s', float('nan')):7.3f} "
          f"{r.get('speedup_vs_star', float('nan')):6.2f} {r['decode_step_ms']:7.2f} {r['decode_comm_ms']:11.2f}")
PY
