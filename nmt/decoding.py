"""Decoding as a `DecodeConfig` says: the search it names (greedy, beam or sampling), and
many sentences searched in length-sorted batches and returned in input order."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.data.batching import collate, plan_batches
from nmt.device import autocast
from nmt.models.base import MEAN_OF_LAST_LAYER, AttentionChoice, Seq2Seq
from nmt.sampling import sample_search, sampler
from nmt.search import Hypothesis, SearchResult, beam_search, greedy_search


def search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    cfg: DecodeConfig,
    *,
    need_attention: bool = False,
    attention: AttentionChoice = MEAN_OF_LAST_LAYER,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """Greedy search for `cfg.beam_size` 1, beam search otherwise, sampling with `cfg.sample`
    (from `generator`, or a new one seeded with `cfg.seed`); scores use `cfg.length_penalty`
    either way. `src` (B, S) ids, `src_mask` (B, S). Call with the model in eval mode.
    """
    lengths = {"max_len_a": cfg.max_len_a, "max_len_b": cfg.max_len_b}
    if cfg.sample:
        return sample_search(model, src, src_mask, **lengths, num_samples=cfg.nbest,
                             generator=generator or sampler(cfg, src.device),
                             temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                             length_penalty=cfg.length_penalty,
                             need_attention=need_attention, attention=attention)  # fmt: skip
    if cfg.beam_size == 1 and cfg.nbest == 1:
        return greedy_search(model, src, src_mask, **lengths, length_penalty=cfg.length_penalty,
                             need_attention=need_attention, attention=attention)  # fmt: skip
    return beam_search(model, src, src_mask, **lengths, beam_size=cfg.beam_size,
                       length_penalty=cfg.length_penalty, nbest=cfg.nbest,
                       need_attention=need_attention, attention=attention)  # fmt: skip


@torch.inference_mode()
def search_in_order(
    model: Seq2Seq,
    src_ids: Sequence[list[int]],
    cfg: DecodeConfig,
    *,
    device: torch.device,
    precision: torch.dtype,
    max_tokens: int,
    need_attention: bool = False,
    attention: AttentionChoice = MEAN_OF_LAST_LAYER,
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """The n-best list of every source (ids without EOS), in the order of `src_ids`.

    Sources are sorted by length and cut into batches of at most `max_tokens` source tokens
    (EOS included) and `cfg.max_sentences` sentences, so that little of each batch is padding;
    no length is rounded up (search compiles nothing). An empty source gets an empty output
    without a search, and so does one too long for `max_tokens` alone (`plan_batches` warns):
    callers truncate sources to fit. Validation and both commands decode through here.
    `decode.sample` draws from `generator`, or from a new stream seeded with `decode.seed`;
    a caller that searches a long input in chunks passes one stream for all of them.
    """
    model.eval()
    if cfg.sample and generator is None:
        generator = sampler(cfg, device)  # one stream for all batches
    results = [[Hypothesis([], 0.0, True)] for _ in src_ids]
    real = [i for i, ids in enumerate(src_ids) if ids]
    lengths = [len(src_ids[i]) for i in real]
    plan = plan_batches(lengths, [0] * len(real), max_tokens, pad_multiple=1,
                        max_sentences=cfg.max_sentences)  # fmt: skip
    for batch in plan:
        rows = [real[i] for i in batch]
        padded = collate([src_ids[r] for r in rows], [[] for _ in rows], rows, pad_multiple=1)
        with autocast(device, precision):
            found = search(model, padded.src.to(device), padded.src_mask.to(device), cfg,
                           need_attention=need_attention, attention=attention,
                           generator=generator)  # fmt: skip
        for row, nbest in zip(rows, found.nbest):
            results[row] = nbest
    return results
