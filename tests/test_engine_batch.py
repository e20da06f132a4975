"""Batched decoding: B sequences of different prompt lengths speculating together (one tree,
cache length, accepted path and bonus each) emit exactly what each emits alone, greedy
and sampled; finished sequences are pinned while the rest go on. CPU, reference ops; the
GPU variants (kernels, CUDA graphs, bf16) run where CUDA is present."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from frspec_cuda.models import generate_greedy, load_model  # noqa: E402
from frspec_cuda.models.eagle import load_eagle, random_eagle  # noqa: E402
from frspec_cuda.spec import SpeculativeGenerator  # noqa: E402
from frspec_cuda.spec.autoregressive import AutoregressiveDecoder, divergence_gap  # noqa: E402
from frspec_cuda.vocab import FRVocab  # noqa: E402
from test_eagle import write_copying_eagle  # noqa: E402
from test_engine import SAMPLING, SAMPLING_PROMPT, assert_two_token_draws_follow_the_target, sampling_model  # noqa: E402
from test_models import PROMPTS, write_checkpoint  # noqa: E402

BATCH = [PROMPTS[i] for i in (0, 5, 8, 13, 17)]  # 3, 8, 11, 9, 7 tokens


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(d, "llama", num_hidden_layers=3)
    return load_model(d)


def _fr_vocab(size: int) -> FRVocab:
    g = torch.Generator().manual_seed(size)
    return FRVocab(torch.randperm(256, generator=g)[:size].to(torch.int32), f"random-{size}")


@pytest.mark.parametrize("draft,vocab_size", [("self", None), ("self", 128), ("eagle", 160)])
def test_batch_greedy_equals_each_sequence_alone(model, draft, vocab_size, tmp_path):
    eagle = None
    if draft == "eagle":
        write_copying_eagle(tmp_path / "eagle", model)
        eagle = load_eagle(tmp_path / "eagle", model)
    gen = SpeculativeGenerator(model, draft_layers=2, vocab=None if vocab_size is None else _fr_vocab(vocab_size),
                               depth=4, topk=4, num_nodes=16, eagle=eagle)
    outs, stats = gen.generate_batch(BATCH, 14, stop_ids=())
    for p, got in zip(BATCH, outs):
        assert got == generate_greedy(model, p, 14, stop_ids=()), p
    assert stats.emitted == 14 * len(BATCH)
    assert stats.accepted > 0, "no draft was accepted: the accept / compact / re-feed path did not run"
    # each sequence takes the steps it takes alone (its drafts and verdicts do not depend on
    # its neighbours); the batch steps until the slowest is done
    alone = [gen.generate(p, 14, stop_ids=())[1].steps for p in BATCH]
    assert stats.seq_steps == sum(alone) and stats.steps == max(alone)


def test_batch_sequences_stop_on_their_own_and_are_pinned(model):
    """Stop ids end single sequences early; the others run to their budget. A finished
    sequence's cache length stays where it stopped while the batch keeps stepping."""
    gen = SpeculativeGenerator(model, draft_layers=1, depth=3, topk=3, num_nodes=8)
    alone = [generate_greedy(model, p, 24, stop_ids=()) for p in BATCH]
    stop = alone[1][2]  # sequence 1 stops at its third token (others may stop too, wherever it occurs)
    expect = []
    for out in alone:
        cut = out.index(stop) + 1 if stop in out else len(out)
        expect.append(out[:cut])
    assert len(expect[1]) <= 3 and max(len(e) for e in expect) == 24
    streamed = [[] for _ in BATCH]
    outs, stats = gen.generate_batch(BATCH, 24, stop_ids=(stop,), on_tokens=lambda b, t: streamed[b].extend(t))
    assert outs == expect and streamed == expect
    s = gen._sess
    # its cache holds what it committed up to the step that emitted the stop (<= depth past it)
    assert not bool(s.active[1]) and int(s.cache_len[1]) <= len(BATCH[1]) - 1 + len(expect[1]) + gen.depth
    assert stats.seq_steps < stats.steps * len(BATCH)  # finished sequences were not counted


def test_batch_of_one_is_generate(model):
    gen = SpeculativeGenerator(model, draft_layers=2, depth=4, topk=4, num_nodes=16)
    for p in BATCH[:3]:
        assert gen.generate_batch([p], 11, stop_ids=())[0][0] == gen.generate(p, 11, stop_ids=())[0]


def test_batch_sampling_matches_the_target_distribution(tmp_path):
    """3000 sequences of one prompt sampled as batches of 600 follow the target's processed
    distribution, first and second token (`assert_two_token_draws_follow_the_target`)."""
    m = sampling_model(tmp_path)
    gen = SpeculativeGenerator(m, draft_layers=1, depth=3, topk=3, num_nodes=8)
    g = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(5):
        draws += gen.generate_batch([SAMPLING_PROMPT] * 600, 2, stop_ids=(), generator=g, **SAMPLING)[0]
    assert_two_token_draws_follow_the_target(m, draws)
    # rows are independent draws: not all 600 rows of a batch repeat one sequence
    assert len({tuple(d) for d in draws[:600]}) > 10


def test_ar_batch_equals_each_sequence_alone(model):
    dec = AutoregressiveDecoder(model, 64, batch=len(BATCH))
    streamed = [[] for _ in BATCH]
    outs = dec.generate_batch(BATCH, 12, stop_ids=(), on_tokens=lambda b, t: streamed[b].extend(t))
    expect = [generate_greedy(model, p, 12, stop_ids=()) for p in BATCH]
    assert outs == expect and streamed == expect
    stop = expect[2][1]
    cut = [e[:e.index(stop) + 1] if stop in e else e for e in expect]
    assert dec.generate_batch(BATCH, 12, stop_ids=(stop,)) == cut


def test_batch_bad_input(model):
    gen = SpeculativeGenerator(model, draft_layers=1, depth=3, topk=3, num_nodes=8)
    with pytest.raises(ValueError, match="no prompts"):
        gen.generate_batch([], 4)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        gen.generate_batch([[1, 2], []], 4)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        gen.generate_batch([[1, 2]], 0)
    eagle = SpeculativeGenerator(model, eagle=random_eagle(model), depth=3, topk=3, num_nodes=8)
    with pytest.raises(ValueError, match="prompt 1: an EAGLE draft needs a prompt of at least 2 tokens"):
        eagle.generate_batch([[1, 2], [3]], 4)
    dec = AutoregressiveDecoder(model, 32, batch=2)
    with pytest.raises(ValueError, match="holds a batch of 2, got 3 prompts"):
        dec.generate_batch([[1], [2], [3]], 4)
    with pytest.raises(ValueError, match="use generate_batch"):
        dec.generate([1], 4)
    with pytest.raises(ValueError, match="exceed the cache's 32 slots"):
        dec.generate_batch([[1] * 30, [2]], 4)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        AutoregressiveDecoder(model, 32, batch=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("over", [{}, dict(hidden_size=256, intermediate_size=512)])  # head_dim 16 / 64 (kernel)
def test_batch_on_gpu_bf16_diverges_only_at_near_ties(tmp_path, over):
    """bf16 on the GPU (kernels; CUDA graphs where head_dim allows): each batched sequence
    equals its own AR greedy output or parts from it only at a near-tie of the target; with
    CUDA graphs the batched and the single-sequence speculative runs agree the same way."""
    write_checkpoint(tmp_path, "llama", num_hidden_layers=3, **over)
    m = load_model(tmp_path, dtype=torch.bfloat16, device="cuda")
    gen = SpeculativeGenerator(m, draft_layers=2, depth=5, topk=6, num_nodes=30)
    prompts = [PROMPTS[i] for i in (1, 4, 8, 12, 16, 19)]
    outs, stats = gen.generate_batch(prompts, 32, stop_ids=())
    for p, got in zip(prompts, outs):
        expect = generate_greedy(m, p, 32, stop_ids=())
        gap = divergence_gap(m, p, expect, got)
        assert gap is None or gap[1] <= gap[2], (p, gap)
    assert stats.accepted > 0
    # a stop id ending sequence 2 early (pinned inside the captured commit step): the other
    # rows compute exactly what they did without it
    stop = outs[2][3]
    cut = [o[:o.index(stop) + 1] if stop in o else o for o in outs]
    assert gen.generate_batch(prompts, 32, stop_ids=(stop,))[0] == cut
    assert not bool(gen._sess.active[2]) and int(gen._sess.cache_len[2]) <= len(prompts[2]) - 1 + 4 + gen.depth
