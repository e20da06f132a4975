"""FR-Spec vocabularies: count token frequencies over a corpus, write the top-K token ids,
load and validate vocabularies (FR-Spec's `freq_{K}.pt`, ours, EAGLE-3 `d2t`), slice the
LM head once at load time, and measure how much of a held-out text a top-K set covers.

File formats
- `freq_{K}.pt`: `torch.save` of a plain Python list of exactly K distinct int token ids,
  most frequent first, with the EOS / stop ids forced in (FR-Spec's official format).
- `token_counts.pt`: `torch.save` of a dict with the full int64 `counts` [vocab_size] and
  metadata (tokenizer, corpus, tokens counted), so any K can be cut later without
  recounting (`TokenCounts.load(...).top_ids(K)`).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

DEFAULT_SIZES = (8192, 16384, 32768, 65536)
COUNTS_FORMAT = "frspec_cuda.token_counts/1"

# Llama 3's pre-tokenisation pattern and special-token block (public model card values);
# used when a tokenizer is given as a tiktoken BPE file with Llama 3's 128,000 ranks.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_SPECIAL = 256
LLAMA3_EOS_IDS = (128001, 128008, 128009)  # <|end_of_text|>, <|eom_id|>, <|eot_id|>


# --------------------------------------------------------------------------- tokenizers


@dataclass
class Tokenizer:
    """The little a frequency count needs: batch encoding without special tokens."""

    name: str
    vocab_size: int
    eos_ids: tuple[int, ...]
    _encode_batch: object = field(repr=False)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return self._encode_batch(texts)


def _llama_models_tokenizer_path() -> Path | None:
    spec = importlib.util.find_spec("llama_models")  # locate without importing its deps
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "llama3" / "tokenizer.model"
    return path if path.exists() else None


def _tiktoken_tokenizer(path: Path, threads: int) -> Tokenizer:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(path))
    n = len(ranks)
    # Llama 3 layout: 128,000 BPE ranks followed by 256 special tokens.
    specials = {f"<|special_{i}|>": n + i for i in range(LLAMA3_NUM_SPECIAL)}
    enc = tiktoken.Encoding(name=path.stem, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens=specials)
    pool = ThreadPoolExecutor(max_workers=threads)

    def encode_batch(texts):
        # encode_to_numpy releases the GIL inside the Rust core: threads scale
        return list(pool.map(enc.encode_to_numpy, texts))

    eos = LLAMA3_EOS_IDS if n == 128000 else ()
    return Tokenizer(f"tiktoken:{path}", n + LLAMA3_NUM_SPECIAL, eos, encode_batch)


def _hf_tokenizer(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    file = path / "tokenizer.json" if path.is_dir() else path
    tok = HFTokenizer.from_file(str(file))
    eos: list[int] = []
    config = file.parent / "tokenizer_config.json"
    names = []
    if config.exists():
        cfg = json.loads(config.read_text())
        e = cfg.get("eos_token")
        names.append(e.get("content") if isinstance(e, dict) else e)
    gen = file.parent / "generation_config.json"
    if gen.exists():
        ids = json.loads(gen.read_text()).get("eos_token_id")
        eos += ids if isinstance(ids, list) else ([ids] if ids is not None else [])
    for name in names:
        if name and tok.token_to_id(name) is not None:
            eos.append(tok.token_to_id(name))

    # encode_batch_fast skips offsets (1.5x here); older tokenizers only have encode_batch
    batch = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def encode_batch(texts):
        return [np.asarray(e.ids, dtype=np.int64) for e in batch(texts, add_special_tokens=False)]

    return Tokenizer(f"hf:{file}", tok.get_vocab_size(with_added_tokens=True), tuple(dict.fromkeys(eos)), encode_batch)


def load_tokenizer(spec: str, threads: int | None = None) -> Tokenizer:
    """`spec`: an HF tokenizer directory or tokenizer.json; a tiktoken BPE file (Llama 3's
    `tokenizer.model`); or `llama3` for the one shipped in the PyPI package `llama-models`
    (`pip install --no-deps llama-models==0.3.0`)."""
    threads = threads or os.cpu_count() or 1
    if spec == "llama3":
        path = _llama_models_tokenizer_path()
        if path is None:
            raise FileNotFoundError(
                "tokenizer 'llama3' needs the PyPI package llama-models "
                "(pip install --no-deps llama-models==0.3.0), or pass a tokenizer.model path"
            )
        return _tiktoken_tokenizer(path, threads)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {spec}")
    if path.is_dir() or path.suffix == ".json":
        return _hf_tokenizer(path)
    return _tiktoken_tokenizer(path, threads)


# ------------------------------------------------------------------------------ corpus


TEXT_SUFFIXES = (".txt", ".text", ".rst", ".md", ".jsonl")
GZIP_SUFFIXES = (".gz", ".dz")  # .dz: dictzip, gzip-compatible


def _is_text_file(path: Path) -> bool:
    name = path.name
    for z in GZIP_SUFFIXES:
        if name.endswith(z):
            name = name[: -len(z)]
    return name.endswith(TEXT_SUFFIXES)


def iter_texts(sources: Sequence[str], text_field: str = "text", chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Text from files, directories (recursively, sorted; only .txt/.text/.rst/.md/.jsonl
    files, optionally gzipped), `.gz`/`.dz` files, JSONL (the `text_field` of each record:
    a string or a list of strings) or `-` for stdin, streamed in pieces that end at line
    breaks (plain text is read in ~`chunk_chars` chunks, not line by line)."""
    for src in sources:
        if src == "-":
            yield from _chunks(sys.stdin, chunk_chars)
            continue
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"corpus path not found: {src}")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_text_file(p))
        else:
            files = [path]
        for f in files:
            raw = gzip.open(f, "rb") if f.suffix in GZIP_SUFFIXES else open(f, "rb")
            with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as stream:
                if ".jsonl" in f.suffixes:
                    yield from _jsonl_texts(stream, text_field)
                else:
                    yield from _chunks(stream, chunk_chars)


def _chunks(stream, chunk_chars: int) -> Iterator[str]:
    """~chunk_chars pieces of a text stream, each ending at a line break (or EOF)."""
    rest = ""
    while True:
        block = stream.read(chunk_chars)
        if not block:
            break
        block = rest + block
        cut = block.rfind("\n") + 1
        if cut == 0:  # no line break yet: keep reading
            rest = block
            continue
        rest = block[cut:]
        yield block[:cut]
    if rest:
        yield rest


def _jsonl_texts(stream, text_field: str) -> Iterator[str]:
    for line in stream:
        line = line.strip()
        if not line:
            continue
        value = json.loads(line).get(text_field)
        if isinstance(value, str):
            yield value + "\n"
        elif isinstance(value, list):
            yield from (v + "\n" for v in value if isinstance(v, str))


def iter_batches(texts: Iterable[str], batch_chars: int = 4 << 20, pieces: int = 16) -> Iterator[list[str]]:
    """Batches of ~`batch_chars` characters, each cut into `pieces` strings at line breaks:
    few, large strings keep every tokenizer thread busy without per-line overhead. Text is
    only ever cut at line breaks, so no token spans two pieces."""
    buf, size = [], 0
    for t in texts:
        buf.append(t)
        size += len(t)
        if size >= batch_chars:
            yield _split_at_lines("".join(buf), pieces)
            buf, size = [], 0
    if buf:
        yield _split_at_lines("".join(buf), pieces)


def _split_at_lines(text: str, pieces: int) -> list[str]:
    out, start, step = [], 0, max(1, len(text) // pieces)
    while start < len(text):
        cut = text.find("\n", start + step) + 1
        if cut == 0:
            cut = len(text)
        out.append(text[start:cut])
        start = cut
    return out


def _prefetch(it: Iterator, depth: int = 4) -> Iterator:
    """Run `it` in a background thread (reading and decompressing overlap tokenizing)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    error: list[BaseException] = []

    def produce():
        try:
            for item in it:
                q.put(item)
        except BaseException as exc:  # re-raised in the consumer
            error.append(exc)
        finally:
            q.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := q.get()) is not done:
        yield item
    if error:
        raise error[0]


# ------------------------------------------------------------------------------ counts


@dataclass
class TokenCounts:
    counts: np.ndarray  # int64 [vocab_size]
    tokenizer: str
    corpus: list[str]
    eos_ids: tuple[int, ...] = ()
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())

    def ranking(self) -> np.ndarray:
        """All token ids, most frequent first; ties in id order (deterministic)."""
        return np.argsort(-self.counts, kind="stable")

    def top_ids(self, k: int) -> list[int]:
        """Exactly k distinct ids, most frequent first, with every EOS id included (an EOS
        id outside the top k replaces the least frequent entries)."""
        if not 1 <= k <= len(self.counts):
            raise ValueError(f"K must be in [1, vocab_size={len(self.counts)}], got {k}")
        eos = [e for e in dict.fromkeys(self.eos_ids) if 0 <= e < len(self.counts)]
        if len(eos) > k:
            raise ValueError(f"K={k} is smaller than the {len(eos)} EOS ids {eos}")
        top = [int(t) for t in self.ranking()[:k]]
        missing = [e for e in eos if e not in set(top)]
        if missing:
            # Make room by dropping the least frequent non-EOS entries (k >= len(eos)
            # guarantees there are enough of them).
            eos_set = set(eos)
            others = [t for t in top if t not in eos_set]
            keep = set(others[: len(others) - len(missing)])
            top = [t for t in top if t in eos_set or t in keep] + missing
        assert len(top) == k and len(set(top)) == k
        return top

    def save(self, path: str | Path) -> None:
        torch.save(
            dict(format=COUNTS_FORMAT, counts=torch.from_numpy(self.counts.astype(np.int64)),
                 tokenizer=self.tokenizer, corpus=list(self.corpus), eos_ids=list(self.eos_ids),
                 tokens=self.tokens, seconds=self.seconds),
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> "TokenCounts":
        obj = torch.load(path, weights_only=True)
        if not isinstance(obj, dict) or obj.get("format") != COUNTS_FORMAT:
            raise ValueError(f"{path}: not a frspec_cuda token-counts file (format {COUNTS_FORMAT})")
        return cls(obj["counts"].numpy(), obj["tokenizer"], obj["corpus"], tuple(obj["eos_ids"]), obj.get("seconds", 0.0))


def count_tokens(tokenizer: Tokenizer, sources: Sequence[str], text_field: str = "text",
                 max_tokens: int | None = None, progress: bool = True) -> TokenCounts:
    """Stream the corpus through the tokenizer (all cores) and count every token id."""
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="tok", unit_scale=True, desc="counting", file=sys.stderr, mininterval=1.0)
    try:
        for batch in _prefetch(iter_batches(iter_texts(sources, text_field))):
            ids = tokenizer.encode_batch(batch)
            flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
            if flat.size and (flat.max() >= len(counts)):
                raise ValueError(f"tokenizer produced id {int(flat.max())} >= vocab size {len(counts)}")
            counts += np.bincount(flat, minlength=len(counts))
            if bar is not None:
                bar.update(flat.size)
            if max_tokens is not None and counts.sum() >= max_tokens:
                break
    finally:
        if bar is not None:
            bar.close()
    return TokenCounts(counts, tokenizer.name, [str(s) for s in sources], tokenizer.eos_ids,
                       time.perf_counter() - start)


def write_vocabularies(counts: TokenCounts, out_dir: str | Path, sizes: Iterable[int] = DEFAULT_SIZES) -> list[Path]:
    """Write `freq_{K}.pt` for each K (capped at the vocabulary size) and `token_counts.pt`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k in sizes:
        k = min(int(k), len(counts.counts))
        path = out / f"freq_{k}.pt"
        torch.save(counts.top_ids(k), path)
        written.append(path)
    counts.save(out / "token_counts.pt")
    written.append(out / "token_counts.pt")
    return written


# ------------------------------------------------------------------------- vocabularies


@dataclass
class FRVocab:
    """A draft vocabulary: `ids[i]` is the full-vocabulary token id of draft row i."""

    ids: torch.Tensor  # int32 [K]
    source: str

    @property
    def size(self) -> int:
        return int(self.ids.numel())

    def slice_lm_head(self, weight: torch.Tensor) -> torch.Tensor:
        return slice_lm_head(weight, self.ids)


def slice_lm_head(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The dense [K, hidden] draft head W_fr[i] = W[ids[i]], built once at load time."""
    if weight.dim() != 2:
        raise ValueError(f"LM head weight must be [vocab, hidden], got shape {tuple(weight.shape)}")
    if ids.numel() and int(ids.max()) >= weight.shape[0]:
        raise ValueError(f"vocabulary id {int(ids.max())} is out of range for an LM head of {weight.shape[0]} rows")
    return weight.index_select(0, ids.to(device=weight.device, dtype=torch.long)).contiguous()


def _ids_from_file(path: Path, k: int | None) -> torch.Tensor:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if "d2t" not in tensors:
            raise ValueError(f"{path}: no 'd2t' tensor (EAGLE-3 draft-to-target offsets) in the file")
        return _from_d2t(tensors["d2t"], path)
    obj = torch.load(path, weights_only=True, map_location="cpu")
    if isinstance(obj, list):  # FR-Spec's official format (and ours)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in obj):
            raise ValueError(f"{path}: a vocabulary list must hold ints only")
        return torch.tensor(obj, dtype=torch.int64)
    if isinstance(obj, dict) and obj.get("format") == COUNTS_FORMAT:
        if k is None:
            raise ValueError(f"{path} holds full token counts: say which K to cut (k=...)")
        counts = TokenCounts(obj["counts"].numpy(), obj["tokenizer"], obj["corpus"], tuple(obj["eos_ids"]))
        return torch.tensor(counts.top_ids(k), dtype=torch.int64)
    if isinstance(obj, dict) and "d2t" in obj:
        return _from_d2t(obj["d2t"], path)
    if isinstance(obj, torch.Tensor) and obj.dim() == 1 and not obj.is_floating_point():
        return _from_d2t(obj, path)
    raise ValueError(f"{path}: not a vocabulary (expected a list of ids, token counts, or an EAGLE-3 d2t tensor)")


def _from_d2t(d2t: torch.Tensor, path: Path) -> torch.Tensor:
    """EAGLE-3: target_id = draft_id + d2t[draft_id]."""
    if d2t.dim() != 1 or d2t.is_floating_point():
        raise ValueError(f"{path}: d2t must be a 1-D integer tensor, got {d2t.dtype} {tuple(d2t.shape)}")
    return torch.arange(d2t.numel(), dtype=torch.int64) + d2t.to(torch.int64)


def load_vocab(path: str | Path, vocab_size: int | None = None, eos_ids: Sequence[int] = (),
               k: int | None = None) -> FRVocab:
    """Load and validate a draft vocabulary; `path` may also be `full` (needs vocab_size)."""
    if str(path) == "full":
        if vocab_size is None:
            raise ValueError("vocab 'full' needs the model's vocab_size")
        return FRVocab(torch.arange(vocab_size, dtype=torch.int32), "full")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    ids = _ids_from_file(path, k)
    validate_ids(ids, vocab_size, eos_ids, str(path))
    return FRVocab(ids.to(torch.int32), str(path))


def validate_ids(ids: torch.Tensor, vocab_size: int | None, eos_ids: Sequence[int], name: str) -> None:
    if ids.numel() == 0:
        raise ValueError(f"{name}: the vocabulary is empty")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        raise ValueError(f"{name}: ids must lie in [0, {vocab_size}), found [{lo}, {hi}]")
    if torch.unique(ids).numel() != ids.numel():
        raise ValueError(f"{name}: ids are not unique ({ids.numel() - torch.unique(ids).numel()} duplicates)")
    missing = sorted(set(int(e) for e in eos_ids) - set(ids.tolist()))
    if missing:
        raise ValueError(f"{name}: EOS id(s) {missing} are not in the vocabulary, so the draft could never end a reply")


# ---------------------------------------------------------------------------- coverage


def coverage(counts_eval: np.ndarray, ranking: np.ndarray, sizes: Iterable[int]) -> dict[int, float]:
    """Fraction of the evaluated tokens whose id is among the first K of `ranking`."""
    total = counts_eval.sum()
    return {int(k): float(counts_eval[ranking[:k]].sum() / max(total, 1)) for k in sizes}
