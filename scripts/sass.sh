#!/usr/bin/env bash
# SASS of the sm_90a kernels, here (no GPU needed): compile one csrc/kernels/ file to a cubin
# with the project's flags, print ptxas's wgmma serialisation notes (C75xx) and register /
# spill report, and dump the SASS of the functions whose mangled name matches REGEX with the
# instruction mix and where the wgmma, waits and exponentials sit.
#   scripts/sass.sh tree_attention 'tree_attention_ws_kernelI13__nv_bfloat16Li2ELb1E' [out.sass]
# Needs cuobjdump (CUDA's, or PyPI's nvidia-cuda-cuobjdump wheel: unzip it and put its
# nvidia/cu13/bin on PATH; this machine's CUDA has nvcc and ptxas only).
set -euo pipefail
cd "$(dirname "$0")/.."
file=$1 regex=$2 out=${3:-/tmp/frspec_$1.sass}
command -v cuobjdump >/dev/null || { echo "cuobjdump not on PATH (see the header of $0)"; exit 1; }
cubin=$(mktemp --suffix .cubin)
nvcc -DFRSPEC_HAS_SM90A=1 -Icsrc/include -O3 -DNDEBUG -std=c++17 --expt-relaxed-constexpr \
  -gencode=arch=compute_90a,code=sm_90a -cubin -o "$cubin" "csrc/kernels/$file.cu" -Xptxas -v 2>&1 |
  grep -E "C75[0-9]{2}|registers|spill" | sed 's/^ptxas info    : //' | sort | uniq -c
cuobjdump -sass "$cubin" | awk -v re="$regex" '/Function : /{f = ($0 ~ re)} f' > "$out"
rm -f "$cubin"
python3 - "$out" <<'PY'
import collections, re, sys
ops = []
for line in open(sys.argv[1]):
    m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
    if m:
        ins = re.sub(r"^@!?U?P[T0-9]+\s+", "", m.group(2).strip())
        ops.append((int(m.group(1), 16), ins))
print(f"{len(ops)} instructions in {sys.argv[1]}")
print("mix:", ", ".join(f"{k} {v}" for k, v in collections.Counter(i.split()[0].split(".")[0] for _, i in ops).most_common(16)))
last = None
for addr, ins in ops:  # the pipeline's landmarks (runs of HGMMA / MUFU folded to their first)
    op = ins.split()[0]
    if re.match(r"HGMMA|WARPGROUP|MUFU\.EX2|BAR\.|SYNCS\.PHASECHK", op):
        if op != last or not re.match(r"HGMMA|MUFU", op):
            print(f"  {addr:#07x} {ins[:90]}")
        last = op
PY
