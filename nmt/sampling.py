"""Sampling outputs instead of searching for the most probable ones (back-translation):
temperature, top-k and nucleus sampling, under the conventions of `nmt.search`."""

from __future__ import annotations

import torch
from torch import Tensor

from nmt.config import DecodeConfig
from nmt.models.base import MEAN_OF_LAST_LAYER, AttentionChoice, Seq2Seq, select
from nmt.search import SearchResult, decode_rows, gnmt_penalty, max_output_lengths, to_result


def filter_log_probs(log_probs: Tensor, *, temperature: float, top_k: int, top_p: float) -> Tensor:
    """The distribution sampling draws from: `log_probs` (b, V) divided by `temperature`,
    renormalised, cut to the `top_k` most probable tokens (0 = all) and then to the smallest
    set whose probability reaches `top_p` (nucleus sampling, Holtzman et al. 2020), and
    renormalised again; cut tokens get -inf. The most probable token always survives.
    """
    log_probs = torch.log_softmax(log_probs / temperature, dim=-1)
    if 0 < top_k < log_probs.size(-1):
        cut = torch.ones_like(log_probs, dtype=torch.bool)
        cut.scatter_(-1, log_probs.topk(top_k, dim=-1).indices, False)  # exactly k, ties too
        log_probs = log_probs.masked_fill(cut, float("-inf"))
    if top_p < 1.0:
        sorted_log_probs, order = log_probs.sort(dim=-1, descending=True)
        before = sorted_log_probs.exp().cumsum(dim=-1) - sorted_log_probs.exp()
        cut = before >= top_p  # the mass of the more probable tokens already reaches top_p
        cut[:, 0] = False
        log_probs = log_probs.scatter(-1, order, sorted_log_probs.masked_fill(cut, float("-inf")))
    return torch.log_softmax(log_probs, dim=-1)


@torch.no_grad()
def sample_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    *,
    num_samples: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_len_a: float,
    max_len_b: float,
    length_penalty: float = 0.0,
    need_attention: bool = False,
    attention: AttentionChoice = MEAN_OF_LAST_LAYER,
) -> SearchResult:
    """`num_samples` outputs per sentence of `src` (B, S), each token drawn from the model's
    next-token distribution reshaped by `filter_log_probs` (for back-translation, Edunov et
    al. 2018). Draws come from `generator` alone, so a seed reproduces them.

    Scores are the model's own log-probabilities of the drawn tokens (before temperature and
    truncation) / lp(|Y|), so they compare with beam search's; each sentence's samples are
    sorted by score, best first. Rows leave the batch when they draw EOS or reach their length.
    """
    batch_size, src_len = src.shape
    n = num_samples
    rows = torch.arange(batch_size, device=src.device).repeat_interleave(n)  # row i·N + j
    max_lens = max_output_lengths(src_mask.index_select(0, rows), max_len_a, max_len_b)

    def draw(log_probs: Tensor) -> tuple[Tensor, Tensor]:
        draw_from = filter_log_probs(log_probs, temperature=temperature, top_k=top_k, top_p=top_p)
        token = torch.multinomial(draw_from.exp(), 1, generator=generator).squeeze(1)
        return token, log_probs.gather(1, token[:, None]).squeeze(1)

    tokens, scores, num_steps, attn = decode_rows(
        model, select(model.encode(src, src_mask), rows), max_lens, like=src, pick=draw,
        need_attention=need_attention, attention=attention,
    )  # fmt: skip
    width = tokens.shape[1]
    scores = (scores / gnmt_penalty(num_steps, length_penalty)).view(batch_size, n)
    scores, order = scores.sort(dim=1, descending=True)
    pick = (order + torch.arange(batch_size, device=src.device)[:, None] * n).flatten()
    tokens, num_steps = tokens[pick].view(batch_size, n, width), num_steps[pick].view(batch_size, n)
    if attn is not None:
        attn = attn[pick].view(batch_size, n, width, src_len)
    return to_result(tokens, scores, num_steps, attn, src_mask)


def sampler(cfg: DecodeConfig, device: torch.device) -> torch.Generator:
    """The random stream of `decode.sample`, seeded with `decode.seed` on `device`."""
    return torch.Generator(device=device).manual_seed(cfg.seed)
