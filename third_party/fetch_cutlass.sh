#!/usr/bin/env bash
# Fetch CUTLASS/CuTe headers from PyPI's nvidia-cutlass wheel into third_party/cutlass/
# (git-ignored; never commit them). The GPU machine has no internet: carry the folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=${CUTLASS_WHEEL_VERSION:-4.2.0.0}
[ -d "$here/cutlass/include/cute" ] && { echo "cutlass headers already in $here/cutlass"; exit 0; }
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "nvidia-cutlass==$version"
python3 - "$tmp"/nvidia_cutlass-*.whl "$here/cutlass" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
roots = {"cutlass_library/source/include/": "include/",
         "cutlass_library/source/tools/util/include/": "tools/util/include/"}
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        for src, dst in roots.items():
            if name.startswith(src) and not name.endswith("/"):
                out = dest / dst / name[len(src):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(z.read(name))
print(f"unpacked CUTLASS headers into {dest}")
PY
rm -rf "$tmp"
