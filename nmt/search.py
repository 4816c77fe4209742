"""Greedy search and batched beam search over the `Seq2Seq` contract only: `encode`, `decode`,
`select`; the hypotheses they return, and the building blocks that sampling (`nmt.sampling`)
shares with them.

Letters: B batch, S source length, V vocabulary, K beam size, N n-best size, W the longest
output length allowed in the batch. Masks are bool with True = real token.

Conventions shared by all three searches (greedy, beam, sampling):
- |Y|, the length of a hypothesis, counts its scored steps: its tokens plus EOS when it ended
  with one. A sentence of real source length s decodes at most max(1, floor(a·s + b)) steps, so
  an output never has more than that many tokens; one that reaches the limit without EOS is
  finished as it is.
- score(Y) = Σ_t log p(y_t | y_<t, x) / lp(|Y|), with the GNMT length penalty
  lp(|Y|) = ((5 + |Y|) / 6)^α (Wu et al. 2016, GNMT); α = 0 gives the plain sum.
- PAD and BOS are never emitted; nothing follows EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nmt.models.base import MEAN_OF_LAST_LAYER, AttentionChoice, Memory, Seq2Seq, State, select
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypothesis:
    """One output sentence."""

    tokens: list[int]  # output ids, without BOS and EOS
    score: float  # Σ log p(y_t) over its |Y| steps (EOS included) / lp(|Y|)
    eos: bool  # True if it ended with EOS, False if it was cut at the maximum length
    # (|Y|, s) float32 on the CPU, only when asked for: attention of each step over the s real
    # source positions (the first s columns: batches are right-padded).
    attn: Tensor | None = None

    @property
    def num_steps(self) -> int:
        """|Y| = len(tokens) + 1 if it ended with EOS: the rows of `attn`."""
        return len(self.tokens) + int(self.eos)


@dataclass
class SearchResult:
    """Per sentence of the batch, in input order, its n-best list sorted best first."""

    nbest: list[list[Hypothesis]]

    @property
    def tokens(self) -> list[list[int]]:
        """The best output of each sentence (ids without BOS/EOS)."""
        return [hyps[0].tokens for hyps in self.nbest]

    @property
    def scores(self) -> list[float]:
        return [hyps[0].score for hyps in self.nbest]


def gnmt_penalty(num_steps: Tensor | int, alpha: float) -> Tensor | float:
    """lp(|Y|) = ((5 + |Y|) / 6)^α, the divisor of a hypothesis' summed log-probability."""
    return ((5.0 + num_steps) / 6.0) ** alpha


def max_output_lengths(src_mask: Tensor, max_len_a: float, max_len_b: float) -> Tensor:
    """Most decoding steps per sentence (B,) long: max(1, floor(a · real source length + b))."""
    src_lens = src_mask.sum(dim=1).double()  # float64: the same floor as Python's a * s + b
    return (max_len_a * src_lens + max_len_b).floor().long().clamp(min=1)


def token_log_probs(logits: Tensor) -> Tensor:
    """log p of the next token at every position: logits (B, T, V) -> (B, T, V) float32.

    Normalised in fp32 whatever the autocast dtype, so scores add up the same way everywhere.
    PAD and BOS are never valid outputs; they are masked after normalising, so the other
    tokens keep the model's own log-probabilities. Search and forced decoding (`nmt.scoring`)
    both score through here, so a forced score is the score search would give the same output.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    log_probs[..., PAD_ID] = float("-inf")
    log_probs[..., BOS_ID] = float("-inf")
    return log_probs


def _next_log_probs(logits: Tensor) -> Tensor:
    """log p of the token after the last position: logits (B, T, V) -> (B, V) float32."""
    return token_log_probs(logits[:, -1:])[:, 0]


@torch.no_grad()
def greedy_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    *,
    max_len_a: float,
    max_len_b: float,
    length_penalty: float = 0.0,
    need_attention: bool = False,
    attention: AttentionChoice = MEAN_OF_LAST_LAYER,
) -> SearchResult:
    """The most probable next token at every step: source ids `src` (B, S), `src_mask` (B, S).

    Sentences that emit EOS or reach their maximum length leave the batch (`select`), so a long
    sentence does not keep short ones decoding. `length_penalty` (α) only rescales the returned
    scores, like beam search's; it never changes the output. The oracle for beam size 1.
    With `need_attention`, each hypothesis carries the cross-attention that `attention` picks.
    """
    max_lens = max_output_lengths(src_mask, max_len_a, max_len_b)
    tokens, scores, num_steps, attn = decode_rows(
        model, model.encode(src, src_mask), max_lens, like=src, pick=_most_probable,
        need_attention=need_attention, attention=attention,
    )  # fmt: skip
    scores = scores / gnmt_penalty(num_steps, length_penalty)
    return to_result(
        tokens[:, None], scores[:, None], num_steps[:, None], _unsqueeze(attn), src_mask
    )


def _most_probable(log_probs: Tensor) -> tuple[Tensor, Tensor]:
    """Greedy search's choice: the most probable token of each row, and its log-probability."""
    score, token = log_probs.max(dim=-1)
    return token, score


def decode_rows(
    model: Seq2Seq,
    memory: Memory,
    max_lens: Tensor,
    *,
    like: Tensor,
    pick: Callable[[Tensor], tuple[Tensor, Tensor]],
    need_attention: bool,
    attention: AttentionChoice,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """One output for each row of `memory`, token by token as `pick(log_probs)` chooses them
    (each row's token and its log-probability), until EOS or the row's `max_lens`: greedy
    search and sampling differ in `pick` alone. Rows that finish leave the batch (`select`),
    so a long output does not keep short ones decoding.

    Returns tokens (R, W) with PAD after EOS, summed log-probabilities (R,), num_steps (R,) and,
    with `need_attention`, the attention `attention` picks (R, W, S); `like` gives the ids'
    dtype, device and source length.
    """
    num_rows, src_len = len(max_lens), like.shape[1]
    width = int(max_lens.max())
    tokens = like.new_full((num_rows, width), PAD_ID)
    scores = torch.zeros(num_rows, device=like.device)
    num_steps = torch.zeros_like(max_lens)
    attn = torch.zeros(num_rows, width, src_len, device=like.device) if need_attention else None

    state = None
    active = torch.arange(num_rows, device=like.device)  # input row of each row still going
    last = like.new_full((num_rows, 1), BOS_ID)
    for t in range(width):
        out = model.decode(last, memory, state, need_attention=need_attention)
        token, step_scores = pick(_next_log_probs(out.logits))
        tokens[active, t] = token
        scores[active] += step_scores
        if attn is not None:
            attn[active, t] = attention.of(out)[:, -1].float()
        done = (token == EOS_ID) | (max_lens[active] <= t + 1)
        num_steps[active[done]] = t + 1
        if bool(done.all()):
            break
        state, last = out.state, token[:, None]
        if bool(done.any()):  # drop finished rows; otherwise the cache stays as it is
            keep = (~done).nonzero().squeeze(1)
            active, last = active[keep], last[keep]
            memory, state = select(memory, keep), select(state, keep)
    return tokens, scores, num_steps, attn


@dataclass
class _Finished:
    """The N best finished hypotheses of every sentence, kept as tensors during beam search.

    tokens (B, N, W) ids including EOS, PAD after; scores (B, N) length-penalised, -inf for an
    empty slot; num_steps (B, N) = |Y|; attn (B, N, W, S) or None.
    """

    tokens: Tensor
    scores: Tensor
    num_steps: Tensor
    attn: Tensor | None

    @classmethod
    def empty(cls, src: Tensor, nbest: int, width: int, need_attention: bool) -> _Finished:
        """No hypotheses yet for the sentences of `src` (B, S)."""
        (batch_size, src_len), device = src.shape, src.device
        return cls(
            tokens=src.new_full((batch_size, nbest, width), PAD_ID),
            scores=torch.full((batch_size, nbest), float("-inf"), device=device),
            num_steps=torch.zeros(batch_size, nbest, dtype=torch.long, device=device),
            attn=torch.zeros(batch_size, nbest, width, src_len, device=device)
            if need_attention
            else None,
        )

    def add(self, ids: Tensor, scores: Tensor, seqs: Tensor, attn: Tensor | None) -> None:
        """Merge candidates of sentences `ids` (b,) into their N best: `scores` (b, C) final
        (-inf = not a candidate), `seqs` (b, C, t) ids, `attn` (b, C, t, S).
        """
        num_best, width = self.scores.size(1), self.tokens.size(2)
        t = seqs.size(2)
        all_scores = torch.cat([self.scores[ids], scores], dim=1)
        best_scores, best = all_scores.topk(num_best, dim=1)  # sorted, best first
        new_tokens = F.pad(seqs, (0, width - t), value=PAD_ID)
        all_tokens = torch.cat([self.tokens[ids], new_tokens], dim=1)
        self.tokens[ids] = all_tokens.gather(1, best[..., None].expand(-1, -1, width))
        self.scores[ids] = best_scores
        all_steps = torch.cat([self.num_steps[ids], torch.full_like(scores, t).long()], dim=1)
        self.num_steps[ids] = all_steps.gather(1, best)
        if self.attn is not None and attn is not None:
            all_attn = torch.cat([self.attn[ids], F.pad(attn, (0, 0, 0, width - t))], dim=1)
            index = best[..., None, None].expand(-1, -1, width, all_attn.size(-1))
            self.attn[ids] = all_attn.gather(1, index)


def _top_candidates(beam_scores: Tensor, log_probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The 2K best one-token extensions of each sentence's beams, best first.

    `beam_scores` (b, K) summed log-probs of the live beams, `log_probs` (b·K, V) of their next
    token -> scores (b, 2K), rows (b, 2K) of the extended beam in the b·K live rows, tokens (b, 2K).
    """
    num_active, k = beam_scores.shape
    vocab_size = log_probs.size(-1)
    candidates = (beam_scores.unsqueeze(-1) + log_probs.view(num_active, k, vocab_size)).flatten(1)
    scores, index = candidates.topk(2 * k, dim=1)
    first_row = torch.arange(num_active, device=index.device)[:, None] * k
    return scores, first_row + index // vocab_size, index % vocab_size


def _extend(
    prefix: Tensor,
    prefix_attn: Tensor | None,
    step_attn: Tensor | None,
    rows: Tensor,
    token: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Live rows `rows` (any shape R) of `prefix` (b·K, t) followed by `token` (R): ids (R, t+1)
    and, with `prefix_attn` (b·K, t, S) and `step_attn` (b·K, S), attention (R, t+1, S).
    """
    seqs = torch.cat([prefix[rows], token.unsqueeze(-1)], dim=-1)
    if prefix_attn is None or step_attn is None:
        return seqs, None
    return seqs, torch.cat([prefix_attn[rows], step_attn[rows].unsqueeze(-2)], dim=-2)


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src: Tensor,
    src_mask: Tensor,
    *,
    beam_size: int,
    length_penalty: float,
    max_len_a: float,
    max_len_b: float,
    nbest: int = 1,
    need_attention: bool = False,
    attention: AttentionChoice = MEAN_OF_LAST_LAYER,
) -> SearchResult:
    """Beam search over all sentences of `src` (B, S) at once, K = `beam_size` beams each.

    Every step scores the B·K live rows in one `decode` call and keeps the 2K best extensions
    of each sentence: those ending in EOS among the first K become finished hypotheses, and the
    K best others are the new beams (fairseq's scheme). A sentence stops when its N-th best
    finished score (N = `nbest`) is ≥ an upper bound on any hypothesis its beams can still
    reach: a live beam with log-probability s ≤ 0 only loses probability, and s / lp(L) grows
    with L, so no descendant scores above s / lp(max_len). With α = 0 that bound is s itself.
    At its maximum length a sentence's live beams are finished as they are. Stopped sentences
    leave the batch (`select`). With α = 0 and K = 1 this gives exactly `greedy_search`; with
    α > 0 it may keep searching past greedy's EOS for a longer, better-normalised output.
    With `need_attention`, each hypothesis carries the cross-attention that `attention` picks.
    """
    assert 1 <= nbest <= beam_size, (nbest, beam_size)  # settings are checked where they are read
    k, device = beam_size, src.device
    batch_size, src_len = src.shape
    max_lens = max_output_lengths(src_mask, max_len_a, max_len_b)
    width = int(max_lens.max())
    finished = _Finished.empty(src, nbest, width, need_attention)
    beam_rows = torch.arange(k, device=device)
    active = torch.arange(batch_size, device=device)  # input index of each sentence still going
    memory = select(model.encode(src, src_mask), active.repeat_interleave(k))  # rows b·K + j
    state: State | None = None
    beam_scores = torch.full((batch_size, k), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: let only the first one expand
    prefix = src.new_empty((batch_size * k, 0))  # (b·K, t) tokens so far, without BOS
    prefix_attn = torch.zeros(batch_size * k, 0, src_len, device=device) if need_attention else None
    last = src.new_full((batch_size * k, 1), BOS_ID)

    for t in range(width):
        out = model.decode(last, memory, state, need_attention=need_attention)
        log_probs = _next_log_probs(out.logits)  # (b·K, V)
        step_attn = attention.of(out)[:, -1].float() if need_attention else None
        top_scores, top_rows, top_tokens = _top_candidates(beam_scores, log_probs)
        # The K best non-EOS candidates become the beams (a beam adds at most one EOS, so at
        # least K of the 2K are not EOS); sorting on "is EOS" is stable, so order is kept.
        is_eos = top_tokens == EOS_ID
        live = is_eos.to(torch.uint8).sort(dim=1, stable=True).indices[:, :k]
        live_scores, live_rows = top_scores.gather(1, live), top_rows.gather(1, live)
        live_tokens = top_tokens.gather(1, live)
        at_limit = max_lens[active] <= t + 1

        # Finished: EOS among the first K candidates; at the limit, also the live beams.
        fin_scores = torch.cat(
            [
                top_scores[:, :k].masked_fill(~is_eos[:, :k], float("-inf")),
                live_scores.masked_fill(~at_limit[:, None], float("-inf")),
            ],
            dim=1,
        )
        if bool(torch.isfinite(fin_scores).any()):
            fin_rows = torch.cat([top_rows[:, :k], live_rows], dim=1)
            fin_tokens = torch.cat([top_tokens[:, :k], live_tokens], dim=1)
            seqs, seqs_attn = _extend(prefix, prefix_attn, step_attn, fin_rows, fin_tokens)
            finished.add(active, fin_scores / gnmt_penalty(t + 1, length_penalty), seqs, seqs_attn)

        bound = (live_scores / gnmt_penalty(max_lens[active], length_penalty)[:, None]).amax(1)
        done = at_limit | (finished.scores[active, -1] >= bound)
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)
        rows = live_rows[keep].flatten()  # (b'·K,) the surviving beams' rows, in order
        prefix, prefix_attn = _extend(
            prefix, prefix_attn, step_attn, rows, live_tokens[keep].flatten()
        )
        state, last = select(out.state, rows), prefix[:, -1:]
        beam_scores, active = live_scores[keep], active[keep]
        if keep.numel() < done.numel():
            memory = select(memory, (keep[:, None] * k + beam_rows).flatten())

    return to_result(finished.tokens, finished.scores, finished.num_steps, finished.attn, src_mask)


def _unsqueeze(x: Tensor | None) -> Tensor | None:
    return None if x is None else x[:, None]


def to_result(
    tokens: Tensor, scores: Tensor, num_steps: Tensor, attn: Tensor | None, src_mask: Tensor
) -> SearchResult:
    """Tensors of the N best per sentence -> `SearchResult`: `tokens` (B, N, W) with EOS,
    `scores` (B, N) (-inf = empty slot), `num_steps` (B, N), `attn` (B, N, W, S) or None.
    """
    src_lens = src_mask.sum(dim=1).tolist()
    attn = None if attn is None else attn.cpu()
    tokens_list, scores_list, steps_list = tokens.tolist(), scores.tolist(), num_steps.tolist()
    nbest = []
    for i, src_len in enumerate(src_lens):
        hyps = []
        for j, score in enumerate(scores_list[i]):
            if score == float("-inf"):
                continue  # fewer finished hypotheses than slots (only if the vocabulary ran out)
            seq = tokens_list[i][j][: steps_list[i][j]]
            eos = seq[-1] == EOS_ID
            hyp_attn = None if attn is None else attn[i, j, : len(seq), :src_len].cpu()
            hyps.append(Hypothesis(seq[:-1] if eos else seq, score, eos, hyp_attn))
        assert hyps, f"sentence {i} has no finished hypothesis"
        nbest.append(hyps)
    return SearchResult(nbest)
