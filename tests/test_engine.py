"""Speculative greedy decoding (EAGLE-2 tree, self-draft, full and FR vocabularies) emits
exactly the tokens of our autoregressive greedy decoding, on CPU with the reference ops."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from frspec_cuda.models import generate_greedy, load_model  # noqa: E402
from frspec_cuda.spec import SpeculativeGenerator  # noqa: E402
from frspec_cuda.vocab import FRVocab  # noqa: E402
from test_models import PROMPTS, write_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(d, "llama", num_hidden_layers=3)
    return load_model(d)


@pytest.mark.parametrize("vocab_size,draft_layers,depth,topk,nodes",
                         [(None, 1, 6, 10, 60), (None, 2, 6, 10, 60), (128, 2, 4, 4, 16), (200, 1, 3, 2, 5)])
def test_spec_greedy_equals_ar(model, vocab_size, draft_layers, depth, topk, nodes):
    vocab = None
    if vocab_size is not None:  # an FR vocabulary: a fixed subset of the ids
        g = torch.Generator().manual_seed(vocab_size)
        vocab = FRVocab(torch.randperm(256, generator=g)[:vocab_size].to(torch.int32), f"random-{vocab_size}")
    gen = SpeculativeGenerator(model, draft_layers=draft_layers, vocab=vocab, depth=depth, topk=topk,
                               num_nodes=nodes)
    total_steps = total_tokens = accepted = 0
    for prompt in PROMPTS:
        expect = generate_greedy(model, prompt, 16, stop_ids=())
        got, stats = gen.generate(prompt, 16, stop_ids=())
        assert got == expect, prompt
        total_steps += stats.steps
        total_tokens += stats.emitted
        accepted += stats.accepted
    # drafts were accepted (the accept / compact / re-feed path ran); each step emits at
    # most its accepted drafts + the bonus token (the last step may be cut at the limit)
    assert accepted > 0 and total_steps < total_tokens <= total_steps + accepted


def test_spec_rejects_bad_configuration(model):
    with pytest.raises(ValueError, match="draft_layers must be in"):
        SpeculativeGenerator(model, draft_layers=9)
    with pytest.raises(ValueError, match="exceeds the"):
        SpeculativeGenerator(model, depth=2, topk=2, num_nodes=20)
    bad = FRVocab(torch.tensor([1, 300], dtype=torch.int32), "bad")
    with pytest.raises(ValueError, match="ids >= the model's vocab_size 256"):
        SpeculativeGenerator(model, vocab=bad)
