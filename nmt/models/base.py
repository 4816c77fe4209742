"""The one contract between models and everything that drives them (training, search, heatmaps).

Letters: B batch, S source length, T target length, H hidden size, V vocabulary, L layers,
N attention heads. Masks are bool with True = real token.

Search and training call only `encode`, `decode` and `select`; nothing downstream knows which
architecture it holds. Decoder state is a value that `decode` returns and receives back, never
an attribute of a module, so beam search can reorder it with `select` (fairseq's incremental
decoding contract, OpenNMT's `map_state`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

from torch import Tensor, nn

from nmt.errors import UserError
from nmt.vocab import PAD_ID

# Decoder cache: every tensor batch-first (dim 0 = B), opaque to search.
State = dict[str, Tensor]


@dataclass
class Memory:
    """What the encoder hands to the decoder."""

    states: Tensor  # (B, S, H) encoder outputs (the bidirectional RNN's are 2 x hidden_size wide)
    mask: Tensor  # (B, S) bool, True = real source token


@dataclass
class DecoderOutput:
    """One call of `Seq2Seq.decode` over T target positions."""

    logits: Tensor  # (B, T, V) unnormalised scores of the next token
    state: State  # cache to pass back to continue decoding after these T positions
    # (B, T, S) attention over source positions, only when asked for (need_attention=True):
    # the RNN's Bahdanau alignment; the Transformer's last-layer cross-attention averaged
    # over heads, the layer that aligns with the word being written (the first looks up
    # words already written; tests/models/test_reversal.py). Each row sums to 1 over real
    # source positions; padding gets exactly 0.
    attn: Tensor | None = None
    # Per decoder layer, (B, N, T, S) cross-attention per head (the RNN has one layer, one head).
    layer_attn: tuple[Tensor, ...] | None = None


@dataclass(frozen=True)
class AttentionChoice:
    """Which cross-attention to read from a `DecoderOutput`: decoder layer `layer` (negative
    counts from the last, as in Python) averaged over `heads` (None = all). The default is
    `DecoderOutput.attn`; word alignments may read another layer (nmt.alignment)."""

    layer: int = -1
    heads: tuple[int, ...] | None = None

    def of(self, out: DecoderOutput) -> Tensor:
        """(B, T, S) attention of the chosen layer and heads, from a `decode` call with
        need_attention=True: `out.attn` itself for the default, else from `out.layer_attn`."""
        if self.layer == -1 and self.heads is None:
            assert out.attn is not None, "decode with need_attention=True"
            return out.attn
        assert out.layer_attn is not None, "decode with need_attention=True"
        weights = out.layer_attn[self.layer]  # (B, N, T, S)
        if self.heads is not None:
            weights = weights[:, list(self.heads)]
        return weights.mean(dim=1)


MEAN_OF_LAST_LAYER = AttentionChoice()  # what `DecoderOutput.attn` holds


class Seq2Seq(nn.Module, ABC):
    """An encoder-decoder translation model."""

    @abstractmethod
    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        """Encode source ids `src` (B, S) with `src_mask` (B, S) into a `Memory`."""

    @abstractmethod
    def decode(
        self,
        tgt_in: Tensor,
        memory: Memory,
        state: State | None = None,
        need_attention: bool = False,
    ) -> DecoderOutput:
        """Score the next token after each position of `tgt_in` (B, T).

        With `state=None`, `tgt_in` starts at BOS (teacher forcing over a whole target, or the
        first step of search). With the `state` of an earlier call, `tgt_in` continues where that
        call stopped (incremental decoding; T is usually 1). Both give the same logits.
        """

    def forward(
        self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, need_attention: bool = False
    ) -> DecoderOutput:
        """Teacher forcing: logits (B, T, V) for every position of `tgt_in`."""
        return self.decode(tgt_in, self.encode(src, src_mask), need_attention=need_attention)

    def flops_per_token(self, src_len: float, tgt_len: float) -> float:
        """Approximate training FLOPs (forward + backward) per target token.

        `src_len` and `tgt_len` are average sentence lengths in tokens. Counts matrix products
        only (2 FLOPs per multiply-add; backward = 2 x forward), as `model_summary` reports.
        """
        raise NotImplementedError(f"{type(self).__name__} does not estimate its FLOPs")


def embeddings(
    src_vocab_size: int, tgt_vocab_size: int, size: int, *, tie: bool
) -> tuple[nn.Embedding, nn.Embedding]:
    """Source and target embedding tables, ids -> (..., `size`); the padding row gets no gradient.

    With `tie` (model.tie_embeddings) they are one table, which `output_layer` shares too (Press
    & Wolf 2017): fewer parameters, and the source and target of a joint subword vocabulary
    learn one representation. That needs the vocabularies to be one.
    """
    if tie and src_vocab_size != tgt_vocab_size:
        raise UserError(
            f"model.tie_embeddings=true needs a joint vocabulary, but the source has "
            f"{src_vocab_size} tokens and the target {tgt_vocab_size}: set "
            "model.tie_embeddings=false or train a joint tokenizer (data.spm.joint=true)"
        )
    src_embed = nn.Embedding(src_vocab_size, size, padding_idx=PAD_ID)
    tgt_embed = src_embed if tie else nn.Embedding(tgt_vocab_size, size, padding_idx=PAD_ID)
    return src_embed, tgt_embed


def output_layer(tgt_embed: nn.Embedding, *, tie: bool) -> nn.Linear:
    """Logits W_o x (..., V) of the target vocabulary from x (..., E); with `tie`, W_o is the
    target embedding matrix itself."""
    output = nn.Linear(tgt_embed.embedding_dim, tgt_embed.num_embeddings, bias=False)
    if tie:
        output.weight = tgt_embed.weight
    return output


def select(x: Memory | State, index: Tensor) -> Memory | State:
    """Pick batch rows `index` (1-D long) of a `Memory` or `State`: tiles and reorders beams."""
    if isinstance(x, Memory):
        return replace(
            x, states=x.states.index_select(0, index), mask=x.mask.index_select(0, index)
        )
    return {key: value.index_select(0, index) for key, value in x.items()}
