"""Tiny models of every architecture variant, and padded batches to feed them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from nmt.config import ModelConfig
from nmt.models import Seq2Seq, build_model
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID

# Each variant of both architectures that the contract tests run over, as changes to the tiny
# config (tests/conftest.py) and (source, target) vocabulary sizes.
VARIANTS: dict[str, tuple[dict, int, int]] = {
    "rnn-gru": ({"arch": "rnn", "rnn_type": "gru"}, 40, 40),
    "rnn-lstm-untied": ({"arch": "rnn", "rnn_type": "lstm", "tie_embeddings": False}, 37, 43),
    "transformer-prenorm": ({"arch": "transformer"}, 40, 40),
    "transformer-postnorm-learned-untied": (
        {
            "arch": "transformer",
            "norm_first": False,
            "learned_positions": True,
            "tie_embeddings": False,
        },
        37,
        43,
    ),
}


@pytest.fixture(params=sorted(VARIANTS))
def model(request: pytest.FixtureRequest, tiny_model_config: ModelConfig) -> Seq2Seq:
    """A tiny model of each variant in eval mode, its weights jittered away from their
    initialisation (e.g. the RNN's zero attention vector v) so every path matters."""
    overrides, src_vocab_size, tgt_vocab_size = VARIANTS[request.param]
    torch.manual_seed(0)
    cfg = replace(tiny_model_config, **overrides)
    model = build_model(cfg, src_vocab_size, tgt_vocab_size).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return model


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """Random right-padded batches: ids >= 4 inside each length, then EOS, then PAD."""

    def make(model: Seq2Seq, src_lengths: list[int], tgt_lengths: list[int], seed: int = 1):
        generator = torch.Generator().manual_seed(seed)
        src_vocab, tgt_vocab = model.src_embed.num_embeddings, model.tgt_embed.num_embeddings
        src = _padded(src_lengths, src_vocab, generator, last=EOS_ID)
        tgt_in = _padded(tgt_lengths, tgt_vocab, generator, first=BOS_ID)
        return {
            "src": src,
            "src_mask": src != PAD_ID,
            "tgt_in": tgt_in,
            "tgt_mask": tgt_in != PAD_ID,
        }

    return make


def _padded(
    lengths: list[int],
    vocab_size: int,
    generator: torch.Generator,
    first: int | None = None,
    last: int | None = None,
) -> torch.Tensor:
    batch = torch.full((len(lengths), max(lengths)), PAD_ID)
    for row, length in enumerate(lengths):
        batch[row, :length] = torch.randint(4, vocab_size, (length,), generator=generator)
        if first is not None:
            batch[row, 0] = first
        if last is not None:
            batch[row, length - 1] = last
    return batch
