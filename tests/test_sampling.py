"""Sampling (`decode.sample`) against a scripted-probability model: the drawn tokens follow the
model's distribution, reshaped exactly by temperature, top-k and top-p; a seed reproduces them;
scores are the model's own log-probabilities of what was drawn."""

from __future__ import annotations

import collections
import dataclasses
import math

import pytest
import torch

from nmt.config import Config, DecodeConfig
from nmt.config_checks import check_config
from nmt.decoding import search, search_in_order
from nmt.errors import UserError
from nmt.sampling import filter_log_probs, sample_search
from nmt.vocab import EOS_ID
from tests.test_search import ScriptedModel, probs_of

# One first-token distribution whatever the sentence; after the first token, EOS for sure.
FIRST = {EOS_ID: 0.05, 4: 0.4, 5: 0.3, 6: 0.15, 7: 0.1}
NUM_SAMPLES = 4000


def first_then_stop(key: int, prefix: tuple[int, ...]) -> list[float]:
    return probs_of(FIRST if not prefix else {EOS_ID: 1.0})


def first_tokens(*, seed: int = 0, **options) -> collections.Counter:
    """How often each first token was drawn in NUM_SAMPLES samples of one sentence."""
    src = torch.tensor([[4, 5, EOS_ID]])
    found = sample_search(ScriptedModel(first_then_stop), src, src != 0,
                          num_samples=NUM_SAMPLES, generator=torch.Generator().manual_seed(seed),
                          max_len_a=0.0, max_len_b=5, **options)  # fmt: skip
    (samples,) = found.nbest
    assert len(samples) == NUM_SAMPLES
    return collections.Counter(h.tokens[0] if h.tokens else EOS_ID for h in samples)


def assert_frequencies(counts: collections.Counter, expected: dict[int, float]) -> None:
    """Every token's frequency within 5 standard deviations of its probability; tokens of
    probability 0 never drawn."""
    assert set(counts) <= {t for t, p in expected.items() if p > 0}, counts
    for token, p in expected.items():
        sd = math.sqrt(p * (1 - p) / NUM_SAMPLES)
        assert abs(counts[token] / NUM_SAMPLES - p) <= 5 * sd + 1e-9, (token, counts, expected)


def normalised(weights: dict[int, float]) -> dict[int, float]:
    return {t: w / sum(weights.values()) for t, w in weights.items()}


def test_samples_follow_the_model_distribution():
    assert_frequencies(first_tokens(), FIRST)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_reshapes_the_distribution(temperature):
    expected = normalised({t: p ** (1 / temperature) for t, p in FIRST.items()})
    assert_frequencies(first_tokens(temperature=temperature), expected)


def test_top_k_keeps_exactly_the_k_most_probable_tokens():
    counts = first_tokens(top_k=2)
    assert set(counts) == {4, 5}
    assert_frequencies(counts, normalised({4: 0.4, 5: 0.3}))


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    # 0.4 + 0.3 = 0.7 < 0.75: token 6 (0.15) is needed too; 7 and EOS are cut.
    counts = first_tokens(top_p=0.75)
    assert set(counts) == {4, 5, 6}
    assert_frequencies(counts, normalised({4: 0.4, 5: 0.3, 6: 0.15}))
    assert set(first_tokens(top_p=0.1)) == {4}  # the most probable token always survives


def test_filter_log_probs_exactly():
    log_probs = torch.tensor([[0.5, 0.2, 0.2, 0.1]]).log()
    top2 = filter_log_probs(log_probs, temperature=1.0, top_k=2, top_p=1.0).exp()
    # a tie at the k-th place still keeps exactly k tokens
    assert int((top2 > 0).sum()) == 2 and float(top2[0, 0]) == pytest.approx(0.5 / 0.7)
    nucleus = filter_log_probs(log_probs, temperature=1.0, top_k=0, top_p=0.9).exp()
    assert nucleus[0].tolist() == pytest.approx([0.5 / 0.9, 0.2 / 0.9, 0.2 / 0.9, 0.0])


def test_a_seed_reproduces_the_samples_and_another_seed_changes_them():
    assert first_tokens(seed=3) == first_tokens(seed=3)
    cfg = DecodeConfig(sample=True, nbest=5, seed=7, max_len_a=0.0, max_len_b=6)
    model = ScriptedModel(lambda key, prefix: probs_of({EOS_ID: 0.2, 4: 0.3, 5: 0.3, 6: 0.2}))
    sources = [[4, 5], [6], [7, 7, 7], [5]] * 5
    kwargs = {"device": torch.device("cpu"), "precision": torch.float32, "max_tokens": 12}

    def outputs(cfg):
        return [[h.tokens for h in hyps] for hyps in search_in_order(model, sources, cfg, **kwargs)]

    assert outputs(cfg) == outputs(cfg)
    assert outputs(cfg) != outputs(dataclasses.replace(cfg, seed=8))


def test_sample_scores_are_the_model_log_probabilities_sorted_best_first():
    table = {(): {EOS_ID: 0.1, 4: 0.5, 5: 0.4}, (4,): {EOS_ID: 0.7, 6: 0.3}}

    def scripted(key, prefix):
        return probs_of(table.get(prefix, {EOS_ID: 1.0}))

    src = torch.tensor([[4, EOS_ID], [5, EOS_ID]])
    cfg = DecodeConfig(sample=True, nbest=20, seed=1, max_len_a=0.0, max_len_b=2,
                       length_penalty=1.0)  # fmt: skip
    found = search(ScriptedModel(scripted), src, src != 0, cfg)
    for samples in found.nbest:
        scores = [h.score for h in samples]
        assert scores == sorted(scores, reverse=True)
        for h in samples:
            prefix, expected = (), 0.0
            for token in [*h.tokens, *([EOS_ID] if h.eos else [])]:
                expected += math.log(probs_of(table.get(prefix, {EOS_ID: 1.0}))[token])
                prefix = (*prefix, token)
            assert h.score == pytest.approx(expected / ((5 + h.num_steps) / 6) ** 1.0, abs=1e-5)
            assert h.num_steps <= 2  # the length limit holds


@pytest.mark.parametrize(
    ("key", "value"), [("temperature", 0.0), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5)]
)
def test_out_of_range_sampling_settings_are_one_line_errors(key, value):
    cfg = Config(decode=DecodeConfig(sample=True, **{key: value}))
    with pytest.raises(UserError, match=f"decode.{key}") as error:
        check_config(cfg)
    assert "\n" not in str(error.value)


def test_sampling_may_ask_for_more_samples_than_the_beam_size():
    check_config(Config(decode=DecodeConfig(sample=True, beam_size=1, nbest=8)))
