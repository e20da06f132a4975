"""Markdown table + PNG plots of a `frspec bench e2e --json FILE` run (issue #4's report).

    python bench/plot_e2e.py bench/results/e2e_2026-11-25.json   # writes .md and .png beside it
Needs matplotlib (a plotting dependency only; nothing else imports it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src = Path(path)
    loaded = json.loads(src.read_text())
    every = [r for r in loaded if r.get("op") == "e2e"]
    batched = [r for r in loaded if r.get("op") == "e2e_batch"]
    small = [r for r in every if r.get("what", "").startswith("Llama-3.2-1B")]  # the second model's rows
    rows = [r for r in every if r not in small]
    floor = next(r for r in rows if r.get("what", "").startswith("weight-read floor"))
    decode = [r for r in rows if "tok_s" in r and "impl" in r]
    spec = [r for r in rows if "iteration_ms" in r]
    agree = [r for r in rows if "identical" in r]
    kernels = [r for r in rows if r.get("what", "").startswith("kernel time")]

    md = [f"# End-to-end decoding ({src.name})", "", f"Floor: {floor['what']} = {floor['tok_s']} tok/s", "",
          "| decoder | tok/s | x floor |", "| --- | --- | --- |"]
    md += [f"| {r['impl']} | {r['tok_s']} | {r.get('x_floor', '')} |" for r in decode]
    md += ["", "| mode | iteration ms | draft | verify | other | floor ms | x floor | accept (random head) | "
           "projected tok/s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['impl']} | {r['iteration_ms']} | {r['draft_ms']} | {r['verify_ms']} | {r['other_ms']} | "
           f"{r['floor_ms']} | {r['x_floor']} | {r['accept_len']} | {r.get('projected_tok_s', '')} ({r.get('projection', '')}) |"
           for r in spec]
    md += ["", "| greedy agreement | identical | diverged | at near-ties | top-2 gaps |", "| --- | --- | --- | --- | --- |"]
    md += [f"| {r['impl']}: {r['what']} | {r['identical']} | {r['diverged']} | {r['divergences_at_near_ties']} | "
           f"{r['top2_gaps']} |" for r in agree]
    if kernels:
        kinds = sorted({k for r in kernels for k in r if k.endswith("_ms") and k != "kernel_ms"})
        md += ["", "| kernel time (ms) | total | " + " | ".join(k[:-3] for k in kinds) + " |",
               "| --- " * (len(kinds) + 2) + "|"]
        md += [f"| {r['what'][len('kernel time of one '):]} | {r['kernel_ms']} | " +
               " | ".join(str(r.get(k, "")) for k in kinds) + " |" for r in kernels]
    md += [""] + [f"{r['what']}: {r['ratio']}" for r in rows if "ratio" in r]
    if small:
        md += ["", "## Llama-3.2-1B shape", "", "| row | tok/s | x floor | iteration ms | draft | verify | other | "
               "accept (random head) | identical / diverged | ratio |", "| --- " * 10 + "|"]
        md += [f"| {r.get('impl', '')} {r['what']} | {r.get('tok_s', '')} | {r.get('x_floor', '')} | "
               f"{r.get('iteration_ms', '')} | {r.get('draft_ms', '')} | {r.get('verify_ms', '')} | "
               f"{r.get('other_ms', '')} | {r.get('accept_len', '')} | "
               f"{str(r['identical']) + ' / ' + str(r['diverged']) if 'identical' in r else ''} | "
               f"{r.get('ratio', '')} |" for r in small]
    if batched:
        md += ["", "## Batched", "", "| row | tok/s (all sequences) | vs batch 1 | iteration ms | batch-1 iteration ms | "
               "x batch 1 | accept (random head) | projected tok/s | identical / diverged (near-ties) |",
               "| --- " * 9 + "|"]
        md += [f"| {r['impl']} {r['what']} | {r.get('tok_s', '')} | {r.get('vs_batch_1', '')} | "
               f"{r.get('iteration_ms', '')} | {r.get('batch_1_iteration_ms', '')} | "
               f"{r.get('iteration_vs_batch_1', '')} | {r.get('accept_len', '')} | {r.get('projected_tok_s', '')} | "
               + (f"{r['identical']} / {r.get('diverged', r.get('of', 0) - r['identical'])} "
                  f"({r.get('divergences_at_near_ties', '')})" if 'identical' in r else '') + " |" for r in batched]
    src.with_suffix(".md").write_text("\n".join(md) + "\n")

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = ["floor"] + [r["impl"] for r in decode]
    vals = [floor["tok_s"]] + [r["tok_s"] for r in decode]
    a.barh(names[::-1], vals[::-1], color=["tab:blue"] * len(decode) + ["tab:gray"])
    for y, v in enumerate(vals[::-1]):
        a.text(v, y, f" {v:.1f}", va="center")
    a.set_xlabel("tokens / s (batch 1, decode phase)")
    a.set_title("Autoregressive decode, Llama-3-8B shape bf16, H100")
    bottom = [0.0] * len(spec)
    for part, color in (("draft_ms", "tab:orange"), ("verify_ms", "tab:green"), ("other_ms", "tab:purple")):
        v = [r[part] for r in spec]
        b.bar([r["impl"] for r in spec], v, bottom=bottom, color=color, label=part[:-3])
        bottom = [x + y for x, y in zip(bottom, v)]
    b.scatter([r["impl"] for r in spec], [r["floor_ms"] for r in spec], color="black", marker="_", s=900, zorder=3,
              label="bytes floor")
    b.set_ylabel("ms per speculative iteration")
    b.set_title("One iteration (depth 6, top-k 10, 60 nodes)")
    b.legend()
    fig.tight_layout()
    fig.savefig(src.with_suffix(".png"), dpi=110)
    print(f"wrote {src.with_suffix('.md')} and {src.with_suffix('.png')}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/e2e_2026-11-25.json")
