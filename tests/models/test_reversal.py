"""Both architectures learn the toy reversal task (tests/toy.py) from scratch in seconds, and on
sentences they never saw do what the toy promises: they reverse them, and their attention picks
the mirrored source word (the anti-diagonal of a heatmap)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from nmt.alignment import word_links
from nmt.config import DecodeConfig, ModelConfig, SpmConfig
from nmt.decoding import search_in_order
from nmt.models import Seq2Seq, build_model
from nmt.models.base import AttentionChoice
from nmt.tokenizer import Tokenizer, train_tokenizer
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID
from tests.toy import WORD_VOCAB_SIZE, WORDS, toy_pairs


@dataclass(frozen=True)
class Setup:
    """A model and its training on reversal: Adam, linear warmup and decay to 0, seeded."""

    model: ModelConfig
    steps: int
    lr: float
    warmup: int = 0


# Chosen over five seeds each (the test runs seed 0), for a margin on the 99% of the attention
# test at about 15 s (RNN) and 20 s (Transformer) of training on one CPU thread. The RNN, with
# embeddings smaller than its states, aligned 99.5% to 99.9% after 500 steps (98% to 99.7%
# after 300); the Transformer, 99.7% to 100% after 600 steps at lr 2e-2 (99.2% at 1e-2).
SETUPS = {
    "rnn": Setup(
        ModelConfig(
            arch="rnn",
            rnn_type="gru",
            embed_size=16,
            hidden_size=32,
            attention_size=32,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dropout=0.0,
        ),
        steps=500,
        lr=5e-3,
    ),
    "transformer": Setup(
        ModelConfig(
            arch="transformer",
            hidden_size=32,
            num_heads=4,
            ffn_size=64,
            num_encoder_layers=2,
            num_decoder_layers=2,
            dropout=0.0,
        ),
        steps=600,
        lr=2e-2,
        warmup=60,
    ),
}
BATCH_SIZE, NUM_TRAIN, NUM_HELD_OUT = 64, 2000, 200


@dataclass
class Batch:
    src: torch.Tensor  # (B, S): words, EOS, padding
    src_mask: torch.Tensor  # (B, S)
    tgt_in: torch.Tensor  # (B, T): BOS, the words reversed, padding
    tgt_out: torch.Tensor  # (B, T): the words reversed, EOS, padding
    lengths: torch.Tensor  # (B,) words per sentence (T = S = max length + 1)


def _pad(seqs: Sequence[list[int]]) -> torch.Tensor:
    width = max(map(len, seqs))
    return torch.tensor([seq + [PAD_ID] * (width - len(seq)) for seq in seqs])


def _batch(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]]) -> Batch:
    sources = tokenizer.encode([src for src, _ in pairs])
    targets = tokenizer.encode([tgt for _, tgt in pairs])
    src = _pad([[*ids, EOS_ID] for ids in sources])
    return Batch(
        src=src,
        src_mask=src != PAD_ID,
        tgt_in=_pad([[BOS_ID, *ids] for ids in targets]),
        tgt_out=_pad([[*ids, EOS_ID] for ids in targets]),
        lengths=torch.tensor([len(ids) for ids in sources]),
    )


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """SentencePiece trained on the toy corpus, with every word one piece: target token i is
    then the word at source position n - 1 - i."""
    texts = [text for pair in toy_pairs(200) for text in pair]
    spm = SpmConfig(vocab_size=WORD_VOCAB_SIZE, byte_fallback=False)
    tokenizer = train_tokenizer(texts, tmp_path_factory.mktemp("spm") / "toy", spm)
    assert [len(ids) for ids in tokenizer.encode(WORDS)] == [1] * len(WORDS)
    return tokenizer


def train(setup: Setup, tokenizer: Tokenizer) -> Seq2Seq:
    """Adam with linear warmup and decay to 0, on batches drawn with a seeded generator."""
    pairs = toy_pairs(NUM_TRAIN, seed=0)
    torch.manual_seed(0)
    model = build_model(setup.model, tokenizer.vocab_size, tokenizer.vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=setup.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / max(setup.warmup, 1)) * (1 - step / setup.steps),
    )
    generator = torch.Generator().manual_seed(0)
    for _ in range(setup.steps):
        rows = torch.randint(len(pairs), (BATCH_SIZE,), generator=generator).tolist()
        batch = _batch(tokenizer, [pairs[row] for row in rows])
        logits = model(batch.src, batch.src_mask, batch.tgt_in).logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return model.eval()


@pytest.fixture(scope="module", params=sorted(SETUPS))
def trained(request: pytest.FixtureRequest, tokenizer: Tokenizer) -> Seq2Seq:
    """Each architecture, trained on reversal (once for the tests below)."""
    return train(SETUPS[request.param], tokenizer)


def held_out(tokenizer: Tokenizer) -> Batch:
    """Toy pairs that training never saw."""
    seen = set(toy_pairs(NUM_TRAIN, seed=0))
    pairs = [pair for pair in toy_pairs(NUM_HELD_OUT, seed=99) if pair not in seen]
    return _batch(tokenizer, pairs)


def test_held_out_sentences_are_reversed(trained: Seq2Seq, tokenizer: Tokenizer) -> None:
    """For >= 99% of held-out sentences every next token is the most likely one: as incremental
    and full decoding agree (test_seq2seq_contract), greedy search writes their exact reversal."""
    batch = held_out(tokenizer)
    with torch.no_grad():
        predicted = trained(batch.src, batch.src_mask, batch.tgt_in).logits.argmax(-1)
    wrong = ((predicted != batch.tgt_out) & (batch.tgt_out != PAD_ID)).any(1)
    assert wrong.float().mean() <= 0.01, f"{int(wrong.sum())} of {len(wrong)} not reversed"


def test_attention_is_the_anti_diagonal(trained: Seq2Seq, tokenizer: Tokenizer) -> None:
    """For >= 99% of held-out target words, the argmax of `DecoderOutput.attn` is the mirrored
    source position: word i of n is written while looking at source word n - 1 - i.

    The RNN has one attention, Bahdanau's alignment α_i of target word i. Early in training it
    often lands one position right (never left), on the word just written: likely because the
    query s_{i-1} has read that word's annotation as c_{i-1}, so attending there again is easy,
    and the forward RNN state there still holds the word before it. Longer training (500 steps,
    not 300) moves those rows onto the mirrored word.

    The Transformer's `attn` is its last decoder layer's cross-attention averaged over heads,
    and that is the layer that aligns (each head alone lands on the mirrored word for about 90%
    to 98% of words, their average for more than 99%). The first layer does so for 25% to 80%,
    depending on the seed, and otherwise looks one or two positions right, at words already
    written: its queries know the target words so far but not the source length, so they find
    those words in the source by content. Knowing where they are, the last layer attends one
    position to their left: the word it writes.

    EOS is left out: no source word mirrors it, and where a model looks to end varies.
    """
    batch = held_out(tokenizer)
    with torch.no_grad():
        attn = trained(batch.src, batch.src_mask, batch.tgt_in, need_attention=True).attn
    position = torch.arange(attn.size(1))
    mirrored = (batch.lengths[:, None] - 1 - position).clamp(min=0)  # (B, T)
    words = position < batch.lengths[:, None]  # target words, not EOS or padding
    aligned = (attn.argmax(-1) == mirrored)[words].float().mean().item()
    assert aligned >= 0.99, f"attention picks the mirrored source word for {aligned:.1%}"


@pytest.mark.parametrize("beam_size", [1, 4])
def test_word_alignments_are_the_reversal(trained: Seq2Seq, tokenizer: Tokenizer, beam_size: int):
    """What `nmt translate translate.alignments=FILE` writes, through greedy and beam search:
    for >= 99% of the output words of held-out sentences, the one link is to the mirrored source
    word (output word j of n to source word n - 1 - j). The Transformer's layer is its last
    (translate.alignment_layer=-1), the one that aligns on this task (see above); on Multi30k the
    first aligned best, which is why it is the command's default (README)."""
    seen = set(toy_pairs(NUM_TRAIN, seed=0))
    sources = [src for src, tgt in toy_pairs(NUM_HELD_OUT, seed=99) if (src, tgt) not in seen]
    src_ids = tokenizer.encode(sources)
    cfg = DecodeConfig(beam_size=beam_size, length_penalty=1.0)
    found = search_in_order(trained, src_ids, cfg, device=torch.device("cpu"),
                            precision=torch.float32, max_tokens=1024, need_attention=True,
                            attention=AttentionChoice(layer=-1))  # fmt: skip
    num_words = num_mirrored = 0
    for text, ids, nbest in zip(sources, src_ids, found):
        best = nbest[0]
        src_words = tokenizer.source_words(text)[: len(ids)]
        links = word_links(best.attn, src_words, tokenizer.output_words(best.tokens))
        out_len, src_len = len(tokenizer.decode([best.tokens])[0].split()), len(text.split())
        assert sorted(j for _, j in links) == list(range(out_len))  # one link per output word
        num_words += out_len
        num_mirrored += sum(i == src_len - 1 - j for i, j in links)
    assert num_mirrored / num_words >= 0.99, f"{num_mirrored} of {num_words} words mirrored"
