"""A/B of two or more builds of the extension (a compile-time change: the builds cannot share a
process, so each round runs one process per build, in turn, and copies that build's _C.so into
the package first). Each process runs `bench/tree_ab.py pdl 1 1 <impl> <shapes>` (one timing
per shape); medians over rounds per build and shape.
python bench/build_ab.py DIR_A,DIR_B[,...] [rounds] [impl] ["B,N,prefix;..."]
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
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
so = os.path.join(root, "python", "frspec_cuda", "_C.so")
keep = so + ".build_ab"
shutil.copy2(so, keep)
times: dict[tuple[str, str], list[float]] = {}
row = re.compile(r"^(B=\d+ N=\s*\d+ prefix=\s*\d+):\s+pdl=1\s+([\d.]+)")
try:
    for r in range(rounds):
        for b in builds:
            shutil.copy2(os.path.join(b, "_C.so"), so)
            out = subprocess.run([sys.executable, os.path.join(root, "bench", "tree_ab.py"), "pdl", "1", "1", impl,
                                  shapes], capture_output=True, text=True, check=True,
                                 env=dict(os.environ, PYTHONPATH=os.path.join(root, "python"))).stdout
            for line in out.splitlines():
                m = row.match(line)
                if m:
                    times.setdefault((m.group(1), b), []).append(float(m.group(2)))
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
