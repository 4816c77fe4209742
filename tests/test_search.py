"""Greedy and beam search against models that implement only the contract: a scripted-probability
model (fairseq-style oracle tables) and a random toy GRU with attention, defined here, and the
real RNN and Transformer; and the order-keeping batched search of many sentences.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from nmt.config import DecodeConfig, ModelConfig
from nmt.decoding import search, search_in_order
from nmt.models import build_model
from nmt.models.base import AttentionChoice, DecoderOutput, Memory, Seq2Seq, State
from nmt.search import (
    Hypothesis,
    SearchResult,
    beam_search,
    gnmt_penalty,
    greedy_search,
    max_output_lengths,
)
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

REAL = (4, 5, 6, 7)  # the scripted models' real tokens
SCRIPTED_VOCAB = 8

# ---------------------------------------------------------------------------------------------
# Models


ProbTable = Callable[[int, tuple[int, ...]], list[float]]  # (key, prefix) -> p(next) over V


class ScriptedModel(Seq2Seq):
    """p(next | prefix) read from `table(key, prefix)`, key = the sentence's first source id.

    The memory carries the key (states (B, S, 1)) so search must tile and reorder it right; the
    state is the prefix so far (B, t), batch-first. Attention is uniform over the real source.
    """

    def __init__(self, table: ProbTable) -> None:
        super().__init__()
        self.table = table

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        return Memory(states=src.unsqueeze(-1).float(), mask=src_mask)

    def decode(
        self, tgt_in: Tensor, memory: Memory, state: State | None = None, need_attention=False
    ) -> DecoderOutput:
        prefix = tgt_in if state is None else torch.cat([state["prefix"], tgt_in], dim=1)
        keys = memory.states[:, 0, 0].long().tolist()
        rows = prefix.tolist()
        start = prefix.size(1) - tgt_in.size(1)
        probs = [
            [self.table(keys[b], tuple(rows[b][1 : start + t + 1])) for t in range(tgt_in.size(1))]
            for b in range(len(rows))
        ]
        logits = torch.tensor(probs).log()
        mask = memory.mask.float()
        attn = (mask / mask.sum(1, keepdim=True))[:, None].expand(-1, tgt_in.size(1), -1)
        return DecoderOutput(logits, {"prefix": prefix}, attn if need_attention else None)


def probs_of(weights: dict[int, float]) -> list[float]:
    probs = [0.0] * SCRIPTED_VOCAB
    for token, weight in weights.items():
        probs[token] = weight
    return [p / sum(probs) for p in probs]


@functools.cache
def random_table(key: int, prefix: tuple[int, ...]) -> list[float]:
    """A peaky random distribution over EOS and the real tokens, fixed per (key, prefix)."""
    rng = random.Random(f"{key}:{prefix}")
    return probs_of({token: math.exp(2 * rng.gauss(0, 1)) for token in (EOS_ID, *REAL)})


class ToyGRU(Seq2Seq):
    """Embedding "encoder", GRU decoder with dot attention over it; random weights.

    State: "hidden" (B, H). `eos_bias` shifts the EOS logit so outputs end at varied lengths.
    """

    def __init__(self, seed: int, vocab_size: int = 16, size: int = 16, eos_bias: float = 0.0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.src_embed = nn.Embedding(vocab_size, size)
        self.tgt_embed = nn.Embedding(vocab_size, size)
        self.cell = nn.GRUCell(2 * size, size)
        self.output = nn.Linear(2 * size, vocab_size)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator))
            self.output.bias[EOS_ID] += eos_bias

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        return Memory(states=torch.tanh(self.src_embed(src)), mask=src_mask)

    def decode(
        self, tgt_in: Tensor, memory: Memory, state: State | None = None, need_attention=False
    ) -> DecoderOutput:
        if state is None:
            mask = memory.mask.unsqueeze(-1).float()
            hidden = (memory.states * mask).sum(1) / mask.sum(1)
        else:
            hidden = state["hidden"]
        logits, weights = [], []
        for t in range(tgt_in.size(1)):
            scores = torch.bmm(memory.states, hidden.unsqueeze(-1)).squeeze(-1)
            alpha = scores.masked_fill(~memory.mask, float("-inf")).softmax(-1)
            context = torch.bmm(alpha.unsqueeze(1), memory.states).squeeze(1)
            hidden = self.cell(torch.cat([self.tgt_embed(tgt_in[:, t]), context], -1), hidden)
            logits.append(self.output(torch.cat([hidden, context], -1)))
            weights.append(alpha)
        attn = torch.stack(weights, 1) if need_attention else None
        return DecoderOutput(torch.stack(logits, 1), {"hidden": hidden}, attn)


class EosBias(Seq2Seq):
    """Wraps a model and adds `bias` to its EOS logit, so random models stop at varied steps."""

    def __init__(self, inner: Seq2Seq, bias: float) -> None:
        super().__init__()
        self.inner, self.bias = inner, bias

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        return self.inner.encode(src, src_mask)

    def decode(
        self, tgt_in: Tensor, memory: Memory, state: State | None = None, need_attention=False
    ) -> DecoderOutput:
        out = self.inner.decode(tgt_in, memory, state, need_attention=need_attention)
        out.logits[..., EOS_ID] += self.bias
        return out


def build_random_model(kind: str, seed: int) -> Seq2Seq:
    """A random model of `kind`: "toy" (defined here), or "rnn" / "transformer" from
    `nmt.models.build_model`, with peaky distributions.
    """
    if kind == "toy":
        return ToyGRU(seed, eos_bias=2.0).eval()
    cfg = ModelConfig(
        arch=kind,
        embed_size=16,
        hidden_size=16,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dropout=0.0,
        num_heads=2,
        ffn_size=32,
        attention_size=16,
        max_positions=64,
    )
    torch.manual_seed(seed)
    model = build_model(cfg, 16, 16)
    with torch.no_grad():  # larger weights than the real init: fewer near-ties, decisive argmax
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    return EosBias(model, bias=3.0).eval()


MODEL_KINDS = ["toy", "rnn", "transformer"]


def random_batch(lengths: list[int], seed: int, vocab_size: int = 16) -> tuple[Tensor, Tensor]:
    """Right-padded source ids (B, S) with real ids in [4, vocab) and their mask (B, S)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    src = torch.randint(4, vocab_size, mask.shape, generator=generator)
    return src.masked_fill(~mask, PAD_ID), mask


def keyed_batch(keys: list[int], lengths: list[int]) -> tuple[Tensor, Tensor]:
    """Sources for `ScriptedModel`: sentence i starts with key i, length lengths[i]."""
    src, mask = random_batch(lengths, seed=0)
    src[:, 0] = torch.tensor(keys)
    return src, mask


# ---------------------------------------------------------------------------------------------
# Oracles


def sequence_log_prob(table: ProbTable, key: int, tokens: list[int], eos: bool) -> float:
    """Σ log p over the steps of `tokens` (+ EOS), in float64."""
    steps = [*tokens, EOS_ID] if eos else tokens
    return sum(math.log(table(key, tuple(steps[:t]))[token]) for t, token in enumerate(steps))


def brute_force(
    table: ProbTable, key: int, max_len: int, alpha: float
) -> list[tuple[float, tuple[int, ...]]]:
    """Every output of at most `max_len` steps, (penalised score, tokens), best first."""
    outputs = []
    for length in range(max_len + 1):
        for tokens in itertools.product(REAL, repeat=length):
            eos = length < max_len  # shorter outputs end with EOS; full-length ones are cut
            log_prob = sequence_log_prob(table, key, list(tokens), eos)
            outputs.append((log_prob / gnmt_penalty(length + eos, alpha), tokens))
    return sorted(outputs, reverse=True)


def teacher_forced(model: Seq2Seq, src: Tensor, mask: Tensor, hyp: Hypothesis):
    """Σ log p of `hyp` and its attention (|Y|, s) under full (non-incremental) decoding."""
    steps = [*hyp.tokens, EOS_ID] if hyp.eos else hyp.tokens
    tgt_in = torch.tensor([[BOS_ID, *steps[:-1]]])
    src_len = int(mask.sum())
    with torch.no_grad():
        out = model(src[None, :src_len], mask[None, :src_len], tgt_in, need_attention=True)
    log_probs = out.logits[0].float().log_softmax(-1)
    return float(log_probs[torch.arange(len(steps)), steps].sum()), out.attn[0]


def assert_clean(hyp: Hypothesis, max_len: int) -> None:
    """No special id inside an output, length within the limit, `eos` consistent with it."""
    assert not {PAD_ID, BOS_ID, EOS_ID} & set(hyp.tokens)
    assert hyp.num_steps <= max_len
    if not hyp.eos:
        assert len(hyp.tokens) == max_len


# ---------------------------------------------------------------------------------------------
# Scripted-probability oracle


def test_beam_finds_the_better_sequence_that_greedy_misses() -> None:
    # Greedy takes A (0.6) then EOS: 0.6·0.35 = 0.21. Beam 2 keeps B (0.4): B EOS = 0.36.
    a, b = REAL[:2]
    script = {(): {a: 0.6, b: 0.4}, (a,): {EOS_ID: 0.35, a: 0.3, b: 0.2, REAL[2]: 0.15}}

    def table(key: int, prefix: tuple[int, ...]) -> list[float]:
        return probs_of(script.get(prefix, {EOS_ID: 0.9, a: 0.1}))

    model = ScriptedModel(table)
    src, mask = keyed_batch([9], [3])
    greedy = greedy_search(model, src, mask, max_len_a=0.0, max_len_b=4)
    beam = beam_search(
        model, src, mask, beam_size=2, length_penalty=0.0, max_len_a=0.0, max_len_b=4
    )
    assert greedy.tokens == [[a]]
    assert greedy.scores[0] == pytest.approx(math.log(0.6 * 0.35), abs=1e-6)
    assert beam.tokens == [[b]]
    assert beam.scores[0] == pytest.approx(math.log(0.4 * 0.9), abs=1e-6)


def test_length_penalty_bound_searches_past_a_finished_hypothesis() -> None:
    # EOS first is the most probable single step, but with α = 1 the three-step A A EOS has the
    # better normalised score; a criterion that ignored the penalty would stop after step 1.
    a = REAL[0]
    script = {(): {EOS_ID: 0.5, a: 0.45, REAL[1]: 0.05}, (a,): {a: 0.99, EOS_ID: 0.01}}

    def table(key: int, prefix: tuple[int, ...]) -> list[float]:
        return probs_of(script.get(prefix, {EOS_ID: 0.99, a: 0.01}))

    model = ScriptedModel(table)
    src, mask = keyed_batch([9], [1])
    short = beam_search(model, src, mask, beam_size=2, length_penalty=0.0, max_len_a=0, max_len_b=3)
    long = beam_search(model, src, mask, beam_size=2, length_penalty=1.0, max_len_a=0, max_len_b=3)
    assert short.tokens == [[]]
    assert long.tokens == [[a, a]]
    expected = math.log(0.45 * 0.99 * 0.99) / gnmt_penalty(3, 1.0)
    assert long.scores[0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_matches_exhaustive_search(alpha: float) -> None:
    # Max lengths 1, 2, 3: at most 4² live prefixes x 5 next tokens = 80 candidates per step,
    # so a beam of 80 prunes nothing and must return the brute-force n-best exactly.
    keys, lengths = [11, 12, 13], [1, 2, 3]
    src, mask = keyed_batch(keys, lengths)
    model = ScriptedModel(random_table)
    result = beam_search(
        model, src, mask, beam_size=80, length_penalty=alpha, max_len_a=1.0, max_len_b=0, nbest=5
    )
    for key, max_len, hyps in zip(keys, lengths, result.nbest):
        oracle = brute_force(random_table, key, max_len, alpha)
        assert [h.score for h in hyps] == pytest.approx([s for s, _ in oracle[:5]], abs=1e-5)
        assert tuple(hyps[0].tokens) == oracle[0][1]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_nbest_sorted_and_scores_are_penalised_sums_of_log_probs(alpha: float) -> None:
    keys, lengths = [21, 22, 23, 24], [2, 5, 3, 4]
    src, mask = keyed_batch(keys, lengths)
    model = ScriptedModel(random_table)
    result = beam_search(
        model, src, mask, beam_size=4, length_penalty=alpha, max_len_a=1.0, max_len_b=1, nbest=4
    )
    for key, max_len, hyps in zip(keys, [3, 6, 4, 5], result.nbest):
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps) == 4
        for hyp in hyps:
            assert_clean(hyp, max_len)
            log_prob = sequence_log_prob(random_table, key, hyp.tokens, hyp.eos)
            assert hyp.score == pytest.approx(log_prob / gnmt_penalty(hyp.num_steps, alpha))


@pytest.mark.parametrize("eos_after", [2, None])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_no_token_after_eos_and_per_sentence_max_lengths(eos_after, beam_size: int) -> None:
    # EOS is near-certain once `eos_after` tokens are out (None: nearly impossible), so outputs
    # are that long, or exactly floor(1.5·s + 1) for real source lengths s = 1, 4, 2, 6.
    def table(key: int, prefix: tuple[int, ...]) -> list[float]:
        ending = eos_after is not None and len(prefix) >= eos_after
        eos = 0.97 if ending else 1e-4
        return probs_of({EOS_ID: eos, **{t: (1 - eos) * (0.1 + 0.2 * (t == key)) for t in REAL}})

    lengths = [1, 4, 2, 6]
    src, mask = keyed_batch([4, 5, 6, 7], lengths)
    max_lens = [math.floor(1.5 * s + 1) for s in lengths]
    assert max_output_lengths(mask, 1.5, 1).tolist() == max_lens
    cfg = DecodeConfig(beam_size=beam_size, length_penalty=1.0, max_len_a=1.5, max_len_b=1)
    result = search(ScriptedModel(table), src, mask, cfg, need_attention=True)
    for key, max_len, hyp in zip([4, 5, 6, 7], max_lens, (hyps[0] for hyps in result.nbest)):
        assert_clean(hyp, max_len)
        expected = eos_after if eos_after is not None and eos_after < max_len else max_len
        assert hyp.eos == (expected < max_len)
        assert len(hyp.tokens) == expected
        assert hyp.tokens == [key] * expected  # the scripted favourite, never anything after
        assert hyp.attn is not None and hyp.attn.shape[0] == hyp.num_steps


def test_pad_and_bos_are_never_emitted() -> None:
    def table(key: int, prefix: tuple[int, ...]) -> list[float]:
        return probs_of({PAD_ID: 0.4, BOS_ID: 0.3, UNK_ID: 0.2, EOS_ID: 0.25 * (len(prefix) > 0)})

    src, mask = keyed_batch([4], [3])
    for beam_size in (1, 3):
        cfg = DecodeConfig(beam_size=beam_size, max_len_a=0.0, max_len_b=5)
        assert search(ScriptedModel(table), src, mask, cfg).tokens == [[UNK_ID]]


# ---------------------------------------------------------------------------------------------
# Random models: beam 1 == greedy, padding invariance, attention


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_beam_size_one_is_greedy(kind: str) -> None:
    for seed in range(3):
        model = build_random_model(kind, seed)
        src, mask = random_batch([5, 2, 7, 3, 1, 6], seed)
        greedy = greedy_search(model, src, mask, max_len_a=1.0, max_len_b=3)
        beam = beam_search(
            model, src, mask, beam_size=1, length_penalty=0.0, max_len_a=1, max_len_b=3
        )
        assert beam.tokens == greedy.tokens
        assert beam.scores == pytest.approx(greedy.scores, abs=1e-5)
        lengths = {len(tokens) for tokens in greedy.tokens}
        assert len(lengths) > 1, "the random model should stop at different lengths"


@pytest.mark.parametrize("beam_size", [1, 4])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_sentence_alone_equals_sentence_in_padded_batch(kind: str, beam_size: int) -> None:
    model = build_random_model(kind, seed=7)
    lengths = [4, 9, 1, 6, 3]
    src, mask = random_batch(lengths, seed=3)
    cfg = DecodeConfig(beam_size=beam_size, nbest=min(2, beam_size), max_len_a=1.0, max_len_b=3)
    batched = search(model, src, mask, cfg)
    for i, length in enumerate(lengths):
        alone = search(model, src[i : i + 1, :length], mask[i : i + 1, :length], cfg)
        assert [h.tokens for h in alone.nbest[0]] == [h.tokens for h in batched.nbest[i]]
        assert [h.score for h in alone.nbest[0]] == pytest.approx(
            [h.score for h in batched.nbest[i]], abs=1e-5
        )


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_attention_and_scores_match_teacher_forcing(kind: str, beam_size: int) -> None:
    # Each hypothesis' attention (|Y|, s) must be the one its own prefix produced (beams were
    # reordered with it), and its score the teacher-forced log-probability, penalised.
    model = build_random_model(kind, seed=11)
    lengths = [3, 8, 5]
    src, mask = random_batch(lengths, seed=5)
    cfg = DecodeConfig(beam_size=beam_size, nbest=beam_size, length_penalty=1.0, max_len_b=2)
    result = search(model, src, mask, cfg, need_attention=True)
    for i, (length, hyps) in enumerate(zip(lengths, result.nbest)):
        for hyp in hyps:
            assert hyp.attn is not None and hyp.attn.shape == (hyp.num_steps, length)
            torch.testing.assert_close(hyp.attn.sum(-1), torch.ones(hyp.num_steps))
            log_prob, attn = teacher_forced(model, src[i], mask[i], hyp)
            torch.testing.assert_close(hyp.attn, attn.float(), atol=1e-5, rtol=1e-4)
            assert hyp.score == pytest.approx(log_prob / gnmt_penalty(hyp.num_steps, 1.0), abs=1e-4)


def test_scores_stay_float32_under_autocast() -> None:
    model = ToyGRU(seed=3, eos_bias=2.0).eval()
    src, mask = random_batch([4, 2, 6], seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = beam_search(
            model, src, mask, beam_size=3, length_penalty=1.0, max_len_a=1, max_len_b=2, nbest=3
        )
    assert all(math.isfinite(h.score) for hyps in result.nbest for h in hyps)
    assert isinstance(result, SearchResult)


# ---------------------------------------------------------------------------------------------
# Many sentences: length-sorted batches, input order kept


@pytest.mark.parametrize("beam_size", [1, 3])
def test_search_in_order_keeps_input_order_whatever_the_batches(beam_size: int) -> None:
    # Sources of varied lengths, two empty ones among them: every sentence gets the n-best
    # list it gets searched alone, in input order, with batches cut by sentences or tokens.
    model = ToyGRU(seed=4, eos_bias=2.0).eval()
    generator = torch.Generator().manual_seed(2)
    sources = [torch.randint(4, 16, (n,), generator=generator).tolist() for n in
               (7, 0, 3, 12, 1, 5, 0, 9, 2, 4)]  # fmt: skip
    cfg = DecodeConfig(beam_size=beam_size, nbest=beam_size, max_len_a=1.0, max_len_b=2)
    settings = {"device": torch.device("cpu"), "precision": torch.float32}
    alone = [search_in_order(model, [ids], cfg, **settings, max_tokens=100) for ids in sources]
    for max_sentences, max_tokens in ((3, 1000), (64, 30), (1, 14)):
        capped = dataclasses.replace(cfg, max_sentences=max_sentences)
        together = search_in_order(model, sources, capped, **settings, max_tokens=max_tokens)
        assert len(together) == len(sources)
        for ids, hyps, (single,) in zip(sources, together, alone):
            assert [h.tokens for h in hyps] == [h.tokens for h in single]
            assert [h.score for h in hyps] == pytest.approx([h.score for h in single], abs=1e-5)
            if not ids:  # not searched: one empty output
                assert len(hyps) == 1 and hyps[0].tokens == [] and hyps[0].eos


SEARCH_MODULE_IMPORTS = {
    "search.py": {"nmt.models.base", "nmt.vocab"},
    "sampling.py": {"nmt.models.base", "nmt.config", "nmt.search"},
    "decoding.py": {"nmt.models.base", "nmt.config", "nmt.data.batching", "nmt.device",
                    "nmt.search", "nmt.sampling"},
}  # fmt: skip


@pytest.mark.parametrize("module", SEARCH_MODULE_IMPORTS)
def test_search_imports_only_the_contract(module: str) -> None:
    source = Path(__file__).parents[1] / "nmt" / module
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    nmt_modules = {name for name in imported if name.startswith("nmt")}
    assert nmt_modules <= SEARCH_MODULE_IMPORTS[module]


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("kind", ["rnn", "transformer"])
def test_the_chosen_layer_and_heads_travel_with_the_hypotheses(kind: str, beam_size: int) -> None:
    # translate.alignment_layer/heads: search carries that layer's attention over those heads,
    # step by step and through the beams' reordering, as full decoding of the output gives it.
    model = build_random_model(kind, seed=13)
    choices = [AttentionChoice(0, (0,))] if kind == "rnn" else [
        AttentionChoice(0), AttentionChoice(-1, (1,)), AttentionChoice(1, (0, 1))]  # fmt: skip
    lengths = [3, 7]
    src, mask = random_batch(lengths, seed=8)
    cfg = DecodeConfig(beam_size=beam_size, nbest=beam_size, max_len_b=2)
    for choice in choices:
        result = search(model, src, mask, cfg, need_attention=True, attention=choice)
        for i, (length, hyps) in enumerate(zip(lengths, result.nbest)):
            for hyp in hyps:
                steps = [*hyp.tokens, EOS_ID] if hyp.eos else hyp.tokens
                tgt_in = torch.tensor([[BOS_ID, *steps[:-1]]])
                with torch.no_grad():
                    out = model(src[None, i, :length], mask[None, i, :length], tgt_in, True)
                heads = list(choice.heads) if choice.heads else slice(None)
                expected = out.layer_attn[choice.layer][0, heads].mean(0)
                torch.testing.assert_close(hyp.attn, expected.float(), atol=1e-5, rtol=1e-4)
