"""A/B of two or more builds of the extension (a compile-time change: the builds cannot share a
process, so each round runs one process per build, in turn, and copies that build's _C.so into
the package first). Each process runs `bench/tree_ab.py VAR VALUES 1 <impl> <shapes>` (one timing
per shape and value; VAR VALUES default "pdl 1", e.g. "splits 2,4,8" for a split sweep);
medians over rounds per build, shape and value.
python bench/build_ab.py DIR_A,DIR_B[,...] [rounds] [impl] ["B,N,prefix;..."] [VAR VALUES]
(DIR_x holds a _C.so; the package's own _C.so is put back at the end.)"""
import os
import re
import shutil
import statistics
import subprocess
import sys

builds = sys.argv[1].split(",")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
impl = sys.argv[3] if len(sys.argv) > 3 else "auto"
shapes = sys.argv[4] if len(sys.argv) > 4 else "1,60,4096;1,60,32768;1,128,32768"
var, values = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else ("pdl", "1")
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
so = os.path.join(root, "python", "frspec_cuda", "_C.so")
keep = so + ".build_ab"
shutil.copy2(so, keep)
times: dict[tuple[str, str], list[float]] = {}
row = re.compile(r"^(B=\d+ N=\s*\d+ prefix=\s*\d+(?: max_len=\d+)?):(.*)$")
cell = re.compile(re.escape(var) + r"=(\S+)\s+([\d.]+)")
try:
    for r in range(rounds):
        for b in builds:
            shutil.copy2(os.path.join(b, "_C.so"), so)
            out = subprocess.run([sys.executable, os.path.join(root, "bench", "tree_ab.py"), var, values, "1", impl,
                                  shapes], capture_output=True, text=True, check=True,
                                 env=dict(os.environ, PYTHONPATH=os.path.join(root, "python"))).stdout
            for line in out.splitlines():
                m = row.match(line)
                if m:
                    for v, t in cell.findall(m.group(2)):
                        key = m.group(1) if var == "pdl" else f"{m.group(1)} {var}={v}"
                        times.setdefault((key, b), []).append(float(t))
        print(f"round {r + 1}/{rounds} done", flush=True)
finally:
    shutil.move(keep, so)
print(f"medians of {rounds} rounds (us), impl {impl}; builds: " + ", ".join(builds))
for key in dict.fromkeys(k for k, _ in times):
    cells = []
    for b in builds:
        t = times.get((key, b), [])
        if t:
            cells.append(f"{os.path.basename(b.rstrip('/'))} {statistics.median(t):7.1f} "
                         f"({min(t):.1f}-{max(t):.1f})")
    print(f"{key}:  " + "  ".join(cells), flush=True)
