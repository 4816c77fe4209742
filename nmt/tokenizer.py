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
from sentencepiece import sentencepiece_model_pb2

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
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model, as checkpoints and exports carry it."""
        return self._sp.serialized_model_proto()

    @property
    def definition(self) -> bytes:
        """The model as far as it maps text to ids and back: `model_proto` without the trainer's
        bookkeeping (the temporary path it wrote to, its thread count). Two preparations of one
        data config, on one machine or two, train the same pieces but record different
        bookkeeping, so this, not `model_proto`, says whether two models are the same."""
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.model_proto)
        for bookkeeping in ("model_prefix", "num_threads", "input"):
            proto.trainer_spec.ClearField(bookkeeping)
        return proto.SerializeToString(deterministic=True)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Ids to detokenized text; special ids (pad, bos, eos) are dropped."""
        return self._sp.decode([[i for i in seq if i > EOS_ID or i == UNK_ID] for seq in ids])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """Subword strings of one sequence, for labelling attention heatmaps."""
        return [self._sp.id_to_piece(int(i)) for i in ids]

    def source_words(self, text: str) -> list[int | None]:
        """For each subword of `encode([text])[0]`, the index of the whitespace-separated word
        of `text` it belongs to (None: whitespace alone, after the last word)."""
        mapping = self._sp.encode(text, return_type="offset_mapping")
        return _words_of_pieces(text, mapping["offsets"])

    def output_words(self, ids: Sequence[int]) -> list[int | None]:
        """For each of `ids` (no pad, bos or eos), the index of the whitespace-separated word of
        their detokenized text (`decode`) it belongs to (None: whitespace alone, at the end)."""
        mapping = self._sp.decode(list(ids), return_type="offset_mapping")
        return _words_of_pieces(mapping["text"], mapping["offsets"])

    def vocabulary(self) -> list[str]:
        """Every piece, in id order (piece i has id i)."""
        return [self._sp.id_to_piece(i) for i in range(self.vocab_size)]


def _words_of_pieces(text: str, offsets: Sequence[tuple[int, int]]) -> list[int | None]:
    """Word index (of `text.split()`) of each piece from its character offsets in `text`.

    A piece belongs to the word of the first non-space character at or after its start: '▁Hund'
    (" Hund") to that word, a lone '▁' (" ") to the word it precedes, and the byte pieces of
    one character (byte fallback; all but the last cover no character) to that character's
    word. So the mapping follows the text itself, not the spelling of the pieces.
    """
    word_of_char: list[int | None] = []
    num_words, in_word = 0, False
    for char in text:
        if char.isspace():  # what str.split() splits on
            word_of_char.append(None)
            in_word = False
        else:
            num_words += not in_word
            word_of_char.append(num_words - 1)
            in_word = True
    at_or_after: list[int | None] = [None] * (len(text) + 1)
    for i in range(len(text) - 1, -1, -1):
        word = word_of_char[i]
        at_or_after[i] = word if word is not None else at_or_after[i + 1]
    return [at_or_after[min(begin, len(text))] for begin, _ in offsets]


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
