"""Command line: `frspec info` and `frspec bench` (also `python -m frspec_cuda ...`)."""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from . import __version__, _library, ops


def _device_description() -> str:
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"cuda:0 {p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB)"
    return f"cpu ({platform.processor() or platform.machine()}, no CUDA device)"


def cmd_info(args) -> int:
    info = _library.build_info()
    lines = [
        ("frspec_cuda", __version__),
        ("build mode", _library.build_mode()),
        ("library", str(_library.LIBRARY_PATH) if _library.LIBRARY_PATH else "-"),
        ("compiled archs", info.get("cuda_archs", "-")),
        ("built against", f"torch {info['torch']}, CUDA runtime {info['cuda_runtime']}" if info else "-"),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        ("python", platform.python_version()),
        ("device", _device_description()),
        ("CUDA kernels", ", ".join(op for op in ops.KERNEL_OPS if _library.has_kernel(op)) or "none"),
    ]
    if _library.LOAD_ERROR:
        lines.append(("load error", _library.LOAD_ERROR))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}}  {v}")
    return 0


def _print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


def cmd_bench(args) -> int:
    from .benchmarks import SUITES

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = args.suites or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(SUITES)}", file=sys.stderr)
        return 2
    print(f"# frspec bench on {_device_description() if device.type == 'cuda' else 'cpu'}")
    all_rows = []
    for name in names:
        rows = SUITES[name](device, quick=args.quick)
        _print_table(rows)
        all_rows += rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frspec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build mode, compiled archs, versions, device, ops with kernels")
    b = sub.add_parser("bench", help="run the op benchmarks on the available device")
    b.add_argument("suites", nargs="*", help="benchmark names (default: all)")
    b.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    b.add_argument("--quick", action="store_true", help="fewer sizes")
    b.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    return {"info": cmd_info, "bench": cmd_bench}[args.command](args)
