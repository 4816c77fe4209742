"""SentencePiece: fixed special ids and exact round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from nmt.config import DataConfig
from nmt.data import prepare
from nmt.errors import UserError
from nmt.tokenizer import Tokenizer


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
