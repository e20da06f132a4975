"""FR-Spec vocabularies: building from a corpus with real tokenizer libraries, the file
formats, loading/validation errors, LM-head slicing and coverage."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from frspec_cuda import vocab
from frspec_cuda.cli import main as cli

TEXT = [
    "the cat sat on the mat and the dog sat on the log",
    "speculative decoding drafts tokens that the target verifies",
    "the frequency ranked vocabulary keeps the most frequent tokens",
    "a draft head scores only the frequent tokens, so it is cheap",
] * 20


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
    """A small byte-level BPE trained here with the `tokenizers` library, saved the way a
    Hugging Face checkpoint ships it, with an EOS token that the text never contains."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    d = tmp_path_factory.mktemp("tok")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text("\n".join(TEXT[:40]) + "\n")
    with gzip.open(d / "b.rst.gz", "wt") as f:
        f.write("\n".join(TEXT[40:60]) + "\n")
    with open(d / "c.jsonl", "w") as f:
        for t in TEXT[60:]:
            f.write(json.dumps({"text": t, "id": 1}) + "\n")
    (d / "skipped.png").write_bytes(b"\x89PNG not text")
    return d


def direct_counts(tokenizer_dir, lines):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    c = Counter()
    for line in lines:
        c.update(tok.encode(line, add_special_tokens=False).ids)
    return c


def test_build_writes_exact_k_with_eos_and_counts_match_a_direct_count(tmp_path, hf_tokenizer_dir, corpus):
    out = tmp_path / "vocab"
    assert cli(["vocab", "build", str(corpus), "--tokenizer", str(hf_tokenizer_dir), "--out", str(out),
                "--sizes", "16", "64", "100000", "--quiet"]) == 0
    tok = vocab.load_tokenizer(str(hf_tokenizer_dir))
    eos = tok.eos_ids
    assert len(eos) == 1
    counts = vocab.TokenCounts.load(out / "token_counts.pt")
    # The same text counted line by line (batching may split lines differently only at
    # line boundaries, which byte-level BPE never merges across).
    lines = [t + "\n" for t in TEXT]
    expect = direct_counts(hf_tokenizer_dir, lines)
    got = {i: int(c) for i, c in enumerate(counts.counts) if c}
    assert got == dict(expect)
    for k in (16, 64, tok.vocab_size):  # 100000 is capped at the vocabulary size
        ids = torch.load(out / f"freq_{k}.pt")
        assert isinstance(ids, list) and len(ids) == k and len(set(ids)) == k
        assert eos[0] in ids
    ids16 = torch.load(out / "freq_16.pt")
    assert ids16[-1] == eos[0]  # never seen in the text: forced in at the end
    by_frequency = sorted(expect, key=lambda t: (-expect[t], t))  # ties: lower id first
    assert ids16[:-1] == by_frequency[:15]


def test_top_ids_forcing_eos_keeps_k_distinct():
    counts = vocab.TokenCounts(np.array([5, 9, 0, 7, 1, 3]), "t", [], eos_ids=(2, 4))
    assert counts.top_ids(4) == [1, 3, 2, 4]
    assert counts.top_ids(6) == [1, 3, 0, 5, 4, 2]
    with pytest.raises(ValueError, match="smaller than the 2 EOS ids"):
        counts.top_ids(1)
    ties = vocab.TokenCounts(np.array([1, 1, 1, 1]), "t", [])
    assert ties.top_ids(3) == [0, 1, 2]  # ties broken by id: deterministic


def test_stdin_and_jsonl_list_fields(tmp_path, hf_tokenizer_dir):
    jl = tmp_path / "q.jsonl"
    jl.write_text(json.dumps({"turns": ["the cat", "the dog"]}) + "\n")
    assert list(vocab.iter_texts([str(jl)], text_field="turns")) == ["the cat\n", "the dog\n"]
    out = tmp_path / "v"
    proc = subprocess.run(
        [sys.executable, "-m", "frspec_cuda", "vocab", "build", "-", "--tokenizer", str(hf_tokenizer_dir),
         "--out", str(out), "--sizes", "8", "--quiet"],
        input="the cat sat on the mat\n" * 10, text=True, capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert vocab.TokenCounts.load(out / "token_counts.pt").tokens > 0


def _tiny_tiktoken_file(path: Path) -> dict[bytes, int]:
    ranks = {bytes([b]): b for b in range(256)}
    for piece in (b"th", b"he", b"the", b" t", b" the", b"at", b"cat"):
        ranks[piece] = len(ranks)
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return ranks


def test_tiktoken_bpe_file(tmp_path):
    import tiktoken

    ranks = _tiny_tiktoken_file(tmp_path / "tiny.model")
    tok = vocab.load_tokenizer(str(tmp_path / "tiny.model"), threads=2)
    assert tok.vocab_size == len(ranks) + vocab.LLAMA3_NUM_SPECIAL
    ref = tiktoken.Encoding("ref", pat_str=vocab.LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens={})
    texts = ["the cat sat", "then the hat"]
    got = tok.encode_batch(texts)
    assert [g.tolist() for g in got] == [ref.encode_ordinary(t) for t in texts]


def test_load_vocab_formats(tmp_path):
    torch.save([5, 3, 9, 2], tmp_path / "freq_4.pt")
    v = vocab.load_vocab(tmp_path / "freq_4.pt", vocab_size=10, eos_ids=[2])
    assert v.ids.dtype == torch.int32 and v.ids.tolist() == [5, 3, 9, 2]
    d2t = torch.tensor([0, 4, 5, 5])  # EAGLE-3: target = draft + d2t[draft]
    torch.save(d2t, tmp_path / "d2t.pt")
    assert vocab.load_vocab(tmp_path / "d2t.pt").ids.tolist() == [0, 5, 7, 8]
    torch.save({"d2t": d2t}, tmp_path / "eagle3.pt")
    assert vocab.load_vocab(tmp_path / "eagle3.pt").ids.tolist() == [0, 5, 7, 8]
    from safetensors.torch import save_file

    save_file({"d2t": d2t, "fc.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    assert vocab.load_vocab(tmp_path / "model.safetensors").ids.tolist() == [0, 5, 7, 8]
    counts = vocab.TokenCounts(np.array([5, 9, 0, 7]), "t", [], eos_ids=(2,))
    counts.save(tmp_path / "token_counts.pt")
    assert vocab.load_vocab(tmp_path / "token_counts.pt", k=2).ids.tolist() == [1, 2]
    assert vocab.load_vocab("full", vocab_size=6).ids.tolist() == list(range(6))


@pytest.mark.parametrize(
    "content,kwargs,message",
    [
        ([1, 2, 12], dict(vocab_size=10), r"ids must lie in \[0, 10\)"),
        ([-1, 2], {}, r"ids must lie in"),
        ([1, 2, 2], {}, "not unique"),
        ([1, 2], dict(eos_ids=[7]), r"EOS id\(s\) \[7\] are not in the vocabulary"),
        ([], {}, "empty"),
        ([1.5, 2], {}, "must hold ints"),
        ({"weights": 1}, {}, "not a vocabulary"),
    ],
)
def test_load_vocab_rejects_bad_files(tmp_path, content, kwargs, message):
    torch.save(content, tmp_path / "v.pt")
    with pytest.raises(ValueError, match=message):
        vocab.load_vocab(tmp_path / "v.pt", **kwargs)


def test_load_vocab_missing_file_and_counts_without_k(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        vocab.load_vocab(tmp_path / "nope.pt")
    vocab.TokenCounts(np.array([1, 2]), "t", []).save(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="say which K"):
        vocab.load_vocab(tmp_path / "c.pt")


def test_slice_lm_head():
    w = torch.randn(10, 4)
    ids = torch.tensor([7, 0, 3], dtype=torch.int32)
    sliced = vocab.slice_lm_head(w, ids)
    assert sliced.is_contiguous() and torch.equal(sliced, w[[7, 0, 3]])
    with pytest.raises(ValueError, match="out of range"):
        vocab.slice_lm_head(w, torch.tensor([10]))


def test_coverage():
    held_out = np.array([10, 0, 5, 5])
    ranking = np.array([0, 2, 3, 1])
    assert vocab.coverage(held_out, ranking, [1, 2, 4]) == {1: 0.5, 2: 0.75, 4: 1.0}
