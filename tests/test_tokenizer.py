"""SentencePiece: fixed special ids and exact round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from nmt.config import DataConfig, SpmConfig
from nmt.data import prepare
from nmt.errors import UserError
from nmt.tokenizer import Tokenizer, train_tokenizer


@pytest.mark.multi30k
def test_round_trip_on_the_validation_split(multi30k_root: Path, tmp_path: Path):
    """decode(encode(x)) == x for every normalized validation sentence, both sides."""
    data = prepare(DataConfig(root=str(multi30k_root), cache_dir=str(tmp_path)))
    val = data.splits["val"]
    for column, tokenizer in (("src", data.src_tokenizer), ("tgt", data.tgt_tokenizer)):
        texts = val[column]
        assert tokenizer.decode(tokenizer.encode(texts)) == texts
    # characters never seen in training survive through byte fallback
    unseen = "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich — 東京 ✓"
    assert data.src_tokenizer.decode(data.src_tokenizer.encode([unseen])) == [unseen]


def test_model_with_other_special_ids_is_rejected(tmp_path: Path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"sentence number {i} with some words" for i in range(200)))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "m"), vocab_size=40, minloglevel=2
    )
    with pytest.raises(UserError, match="special ids other than pad=0"):
        Tokenizer(tmp_path / "m.model")


SENTENCES = [
    "Ein brauner Hund rennt dem schwarzen Hund hinterher.",
    "Zwei Männer stehen am Strand, und ein Kind läuft.",
    "Eine Frau in einem roten Kleid sitzt auf einer Bank.",
]
# Unseen characters (byte fallback, or <unk> without it), a word that starts with one, a word
# of several pieces, runs of spaces and a trailing space.
HARD = ["Ein ☃Hund  läuft über 東京✓ hinterher", "☃ Männer", "x", "Kind ✓ ", "Zwölf"]


@pytest.mark.parametrize("byte_fallback", [True, False])
def test_each_subword_belongs_to_the_word_it_spells(tmp_path: Path, byte_fallback: bool):
    """The subwords `source_words` / `output_words` assign to word i spell exactly word i of the
    text's whitespace tokens (`nmt translate translate.alignments` relies on it)."""
    spm_cfg = SpmConfig(vocab_size=300 if byte_fallback else 80, byte_fallback=byte_fallback)
    tokenizer = train_tokenizer(SENTENCES * 30, tmp_path / "spm", spm_cfg)
    for text in SENTENCES + HARD:
        ids = tokenizer.encode([text])[0]
        decoded = tokenizer.decode([ids])[0]  # what the user sees (⁇ where <unk> stands)
        for words, which in ((tokenizer.source_words(text), text), (tokenizer.output_words(ids),
                                                                    decoded)):  # fmt: skip
            assert len(words) == len(ids) and None not in words  # no piece is only a space here
            spelt = [
                tokenizer.decode([[i for i, w in zip(ids, words) if w == index]])[0].strip()
                for index in range(max(words) + 1)
            ]
            if byte_fallback or which is decoded:
                assert spelt == which.split(), (text, spelt)
            else:  # <unk> spells ⁇, but its word is the source word it stands in
                assert len(spelt) == len(which.split()), (text, spelt)
    assert tokenizer.output_words([]) == [] == tokenizer.source_words("")


def test_one_model_trained_twice_is_the_same_model_wherever_it_was_written(tmp_path: Path):
    """Two preparations of one data config write their tokenizers to different temporary paths:
    the serialized models differ in that bookkeeping alone, and `definition` (what an ensemble
    compares) sees through it; another vocabulary size is another model."""
    trained = {}
    for name, vocab_size in (("a.tmp-1", 300), ("b.tmp-2", 300), ("c", 310)):
        (tmp_path / name).mkdir()
        trained[name] = train_tokenizer(SENTENCES * 30, tmp_path / name / "spm",
                                        SpmConfig(vocab_size=vocab_size))  # fmt: skip
    first, again, other = trained.values()
    assert first.model_proto != again.model_proto
    assert first.definition == again.definition == Tokenizer(again.model_proto).definition
    assert first.definition != other.definition
