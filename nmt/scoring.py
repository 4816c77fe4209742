"""Forced decoding: the log-probability a model gives a given target (teacher forcing), batched
over many pairs in length-sorted batches that keep the input order (`nmt score` runs on this).

Scores come from `nmt.search.token_log_probs`, the normalisation search uses, with no label
smoothing: the forced score of an output equals the score search gave it (α = 0). A target of
n tokens has n + 1 scored steps, EOS included, as |Y| counts them in search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.data.batching import collate, plan_batches
from nmt.device import autocast
from nmt.models.base import Seq2Seq
from nmt.search import token_log_probs
from nmt.vocab import PAD_ID


@dataclass
class PairScore:
    """The forced score of one (source, target) pair."""

    log_prob: float  # Σ_t log p(y_t | y_<t, x) over the target's tokens and EOS; nan if unscored
    num_tokens: int  # scored steps: target tokens + 1 (EOS); 0 if unscored

    @property
    def average(self) -> float:
        """log_prob / num_tokens (nan if unscored)."""
        return self.log_prob / self.num_tokens if self.num_tokens else math.nan


UNSCORED = PairScore(math.nan, 0)


@torch.no_grad()
def force_decode(
    model: Seq2Seq, src: Tensor, src_mask: Tensor, tgt_in: Tensor, tgt_out: Tensor
) -> Tensor:
    """Σ_t log p(tgt_out_t | tgt_in_≤t, src) per row (B,) float32, padding excluded.

    `src`, `src_mask` (B, S); `tgt_in` (B, T) BOS + target, `tgt_out` (B, T) target + EOS,
    both PAD-padded (as `nmt.data.batching.collate` makes them).
    """
    log_probs = token_log_probs(model(src, src_mask, tgt_in).logits)  # (B, T, V)
    picked = log_probs.gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(tgt_out == PAD_ID, 0.0).sum(dim=1)


@torch.inference_mode()
def score_in_order(
    model: Seq2Seq,
    src_ids: Sequence[list[int]],
    tgt_ids: Sequence[list[int]],
    *,
    device: torch.device,
    precision: torch.dtype,
    max_tokens: int,
    max_sentences: int,
) -> list[PairScore]:
    """The forced score of every pair (ids without EOS), in input order.

    Pairs are sorted by length and cut into batches of at most `max_tokens` source + target
    tokens and `max_sentences` pairs. A pair with an empty side, or one too long for
    `max_tokens` alone (`plan_batches` warns), is not scored: `UNSCORED`.
    """
    model.eval()
    results = [UNSCORED] * len(src_ids)
    real = [i for i, (s, t) in enumerate(zip(src_ids, tgt_ids)) if s and t]
    plan = plan_batches([len(src_ids[i]) for i in real], [len(tgt_ids[i]) for i in real],
                        max_tokens, pad_multiple=1, max_sentences=max_sentences)  # fmt: skip
    for batch in plan:
        rows = [real[i] for i in batch]
        padded = collate([src_ids[r] for r in rows], [tgt_ids[r] for r in rows], rows,
                         pad_multiple=1)  # fmt: skip
        with autocast(device, precision):
            sums = force_decode(model, padded.src.to(device), padded.src_mask.to(device),
                                padded.tgt_in.to(device), padded.tgt_out.to(device))  # fmt: skip
        for row, total in zip(rows, sums.tolist()):
            results[row] = PairScore(total, len(tgt_ids[row]) + 1)
    return results
