"""`Ensemble`: a `Seq2Seq` whose next-token distribution is its members' mean, so every search
runs on it unchanged; members of both architectures together."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from nmt.config import DecodeConfig, ModelConfig
from nmt.decoding import search_in_order
from nmt.models import Seq2Seq, build_model
from nmt.models.base import select
from nmt.models.ensemble import Ensemble
from nmt.scoring import force_decode
from nmt.search import beam_search, greedy_search, token_log_probs
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID

VOCAB = 40
LENGTHS = {"max_len_a": 1.0, "max_len_b": 4}


def tiny(cfg: ModelConfig, arch: str, seed: int) -> Seq2Seq:
    """A tiny model of `arch` with jittered weights (so its outputs are not near uniform)."""
    torch.manual_seed(seed)
    model = build_model(replace(cfg, arch=arch), VOCAB, VOCAB).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.tensor(
        [[5, 9, 12, 7, EOS_ID], [8, 20, EOS_ID, PAD_ID, PAD_ID], [33, EOS_ID, 0, 0, 0]]
    )
    return src, src != PAD_ID


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_an_ensemble_of_a_model_with_itself_is_that_model(tiny_model_config, arch):
    model = tiny(tiny_model_config, arch, seed=0)
    pair = Ensemble([model, model]).eval()
    src, src_mask = batch()
    tgt_in = torch.tensor([[BOS_ID, 6, 7, 8]] * 3)
    alone = token_log_probs(model(src, src_mask, tgt_in).logits)
    assert torch.allclose(token_log_probs(pair(src, src_mask, tgt_in).logits), alone, atol=1e-5)
    for run in (
        lambda m: greedy_search(m, src, src_mask, **LENGTHS),
        lambda m: beam_search(
            m, src, src_mask, **LENGTHS, beam_size=3, length_penalty=1.0, nbest=2
        ),
    ):
        mine, theirs = run(pair), run(model)
        assert [[h.tokens for h in n] for n in mine.nbest] == [
            [h.tokens for h in n] for n in theirs.nbest
        ]
        for a, b in zip(mine.nbest, theirs.nbest):
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_the_ensemble_distribution_is_the_mean_of_its_members(tiny_model_config):
    members = [tiny(tiny_model_config, "rnn", 1), tiny(tiny_model_config, "transformer", 2)]
    src, src_mask = batch()
    tgt_in = torch.tensor([[BOS_ID, 6, 7, 8]] * 3)
    mean = sum(m(src, src_mask, tgt_in).logits.softmax(-1) for m in members) / 2
    logits = Ensemble(members).eval()(src, src_mask, tgt_in).logits
    assert torch.allclose(logits.exp(), mean, atol=1e-6)
    assert torch.allclose(logits.logsumexp(-1), torch.zeros(3, 4), atol=1e-5)  # normalised


def test_mixed_architectures_decode_incrementally_as_in_teacher_forcing(tiny_model_config):
    """The state of each member survives the round trip through the ensemble's prefixed keys
    and `select` (tiling and reordering, as beam search does)."""
    ensemble = Ensemble(
        [tiny(tiny_model_config, "rnn", 3), tiny(tiny_model_config, "transformer", 4)]
    )
    ensemble.eval()
    src, src_mask = batch()
    tgt_in = torch.tensor([[BOS_ID, 6, 7, 8], [BOS_ID, 9, 10, 11], [BOS_ID, 12, 13, 14]])
    full = ensemble.decode(tgt_in, ensemble.encode(src, src_mask), need_attention=True)
    index = torch.tensor([2, 0, 0, 1])
    memory, state = select(ensemble.encode(src, src_mask), index), None
    for t in range(tgt_in.size(1)):
        out = ensemble.decode(tgt_in[index, t : t + 1], memory, state, need_attention=True)
        assert torch.allclose(out.logits[:, 0], full.logits[index, t], atol=1e-5)
        assert torch.allclose(out.attn[:, 0], full.attn[index, t], atol=1e-5)
        state = out.state
    rows = full.attn.sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_beam_search_on_a_mixed_ensemble_scores_what_it_outputs(tiny_model_config):
    """Beam scores (α = 0) equal the forced score of the output: any state left unreordered by
    `select` would make them differ."""
    ensemble = Ensemble(
        [tiny(tiny_model_config, "transformer", 5), tiny(tiny_model_config, "rnn", 6)]
    )
    ensemble.eval()
    src, src_mask = batch()
    found = beam_search(ensemble, src, src_mask, **LENGTHS, beam_size=4, length_penalty=0.0,
                        nbest=3, need_attention=True)  # fmt: skip
    for i, hyps in enumerate(found.nbest):
        for hyp in hyps:
            assert hyp.attn is not None and hyp.attn.shape[0] == hyp.num_steps
            tgt = [*hyp.tokens, EOS_ID] if hyp.eos else hyp.tokens
            tgt_in = torch.tensor([[BOS_ID, *tgt[:-1]]])
            forced = force_decode(ensemble, src[i : i + 1], src_mask[i : i + 1], tgt_in,
                                  torch.tensor([tgt]))  # fmt: skip
            assert float(forced) == pytest.approx(hyp.score, abs=1e-4)
    # and the batched, order-keeping search of many sentences runs on it too
    sources = [[5, 9, 12], [8], [33, 34], [], [7] * 9]
    cfg = DecodeConfig(beam_size=2, max_len_a=1.0, max_len_b=3)
    nbest = search_in_order(ensemble, sources, cfg, device=torch.device("cpu"),
                            precision=torch.float32, max_tokens=30)  # fmt: skip
    assert len(nbest) == len(sources) and nbest[3][0].tokens == []
    assert all(math.isfinite(h[0].score) for h in nbest)
