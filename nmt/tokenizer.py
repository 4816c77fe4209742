"""SentencePiece training and loading, with the special-token ids every model relies on.

The ids are fixed here (not left to SentencePiece's defaults) so that embedding padding,
loss masking and search agree on them whatever tokenizer a run trained.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from nmt.config import SpmConfig
from nmt.errors import UserError
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger(__name__)

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "Tokenizer", "train_tokenizer"]


class Tokenizer:
    """A trained SentencePiece model: text <-> subword ids (no BOS/EOS added)."""

    def __init__(self, model: str | Path | bytes) -> None:
        """Load a `.model` file, or the bytes of one (as checkpoints carry them)."""
        if isinstance(model, bytes):
            self.path = Path("<checkpoint>")
            self._sp = spm.SentencePieceProcessor(model_proto=model)
        else:
            self.path = Path(model)
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        if (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id()) != (
            PAD_ID,
            UNK_ID,
            BOS_ID,
            EOS_ID,
        ):
            raise UserError(
                f"{self.path}: SentencePiece model has special ids other than "
                f"pad={PAD_ID} unk={UNK_ID} bos={BOS_ID} eos={EOS_ID}: retrain it with nmt"
            )

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def model(self) -> bytes:
        """The serialised SentencePiece model: equal bytes, equal ids for every text."""
        return self._sp.serialized_model_proto()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Ids to detokenized text; special ids (pad, bos, eos) are dropped."""
        return self._sp.decode([[i for i in seq if i > EOS_ID or i == UNK_ID] for seq in ids])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """Subword strings of one sequence, for labelling attention heatmaps."""
        return [self._sp.id_to_piece(int(i)) for i in ids]


def train_tokenizer(texts: Iterable[str], model_prefix: str | Path, cfg: SpmConfig) -> Tokenizer:
    """Train SentencePiece on `texts` and write `<model_prefix>.model` and `.vocab`.

    Normalization is `identity`: the cleaning step already applied Unicode normalization,
    so `decode(encode(x)) == x` holds for every cleaned sentence (with byte fallback on).
    """
    spm.set_random_generator_seed(cfg.seed)  # sampling and shuffling are reproducible
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(model_prefix),
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        byte_fallback=cfg.byte_fallback,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=True,
        seed_sentencepiece_size=1_000_000,
        normalization_rule_name="identity",
        remove_extra_whitespaces=True,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return Tokenizer(f"{model_prefix}.model")
