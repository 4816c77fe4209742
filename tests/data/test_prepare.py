"""Preparation: SentencePiece on train only, encoded Arrow, fingerprint cache, statistics,
and corpus or vocabulary mistakes stopped with one line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from nmt.config import CleanConfig, DataConfig, SpmConfig
from nmt.data import format_stats, prepare
from nmt.data.prepare import _texts, fingerprint
from nmt.errors import UserError
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID


def test_prepare_encodes_every_split_and_caches(toy_cfg: DataConfig):
    data = prepare(toy_cfg)
    assert not data.cache_hit
    assert set(data.splits) == {"train", "valid", "test"}
    train = data.splits["train"]
    assert len(train) == 200
    assert set(train.column_names) == {"src", "tgt", "src_ids", "tgt_ids", "src_len", "tgt_len"}
    # ids round-trip to the cleaned text and carry no special tokens
    assert data.src_tokenizer.decode(train["src_ids"][:20]) == train["src"][:20]
    assert all(min(ids) > EOS_ID for ids in train["tgt_ids"])
    assert train["src_len"] == [len(ids) for ids in train["src_ids"]]
    assert data.src_tokenizer.vocab_size == 300
    assert data.stats["splits"]["valid"]["pairs_kept"] == 20
    assert not [p for p in Path(toy_cfg.cache_dir).iterdir() if ".tmp-" in p.name]

    again = prepare(toy_cfg)
    assert again.cache_hit and again.path == data.path
    assert again.splits["test"]["tgt_ids"] == data.splits["test"]["tgt_ids"]
    assert "cache hit" in format_stats(again) and "cache miss" in format_stats(data)


def test_special_ids_are_fixed(toy_cfg: DataConfig):
    tokenizer = prepare(toy_cfg).tgt_tokenizer
    assert tokenizer.pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == ["<pad>", "<unk>", "<s>", "</s>"]
    # decode drops padding and BOS/EOS
    ids = tokenizer.encode(["alpha beta"])[0]
    assert tokenizer.decode([[BOS_ID, *ids, EOS_ID, PAD_ID]]) == ["alpha beta"]


def test_separate_vocabularies(toy_cfg: DataConfig):
    cfg = dataclasses.replace(toy_cfg, spm=SpmConfig(vocab_size=290, joint=False))
    data = prepare(cfg)
    assert data.src_tokenizer.path != data.tgt_tokenizer.path
    assert data.stats["joint_vocab"] is False


def test_max_train_pairs_takes_the_first_pairs(toy_cfg: DataConfig):
    full = prepare(toy_cfg).splits["train"]
    cut = prepare(dataclasses.replace(toy_cfg, max_train_pairs=50)).splits["train"]
    assert cut["src"] == full["src"][:50]


def test_fingerprint_changes_exactly_when_it_should(toy_cfg: DataConfig, toy_root: Path):
    base = fingerprint(toy_cfg)
    unchanged = [
        dataclasses.replace(toy_cfg, num_proc=7),
        dataclasses.replace(toy_cfg, name="other"),
        dataclasses.replace(toy_cfg, cache_dir="/elsewhere"),
        dataclasses.replace(toy_cfg, root=str(toy_root) + "/"),
        dataclasses.replace(toy_cfg, tsv_columns=[3, 4]),  # unused by format=text
    ]
    assert all(fingerprint(cfg) == base for cfg in unchanged)
    changed = [
        dataclasses.replace(toy_cfg, spm=SpmConfig(vocab_size=301)),
        dataclasses.replace(toy_cfg, spm=SpmConfig(vocab_size=300, model_type="unigram")),
        dataclasses.replace(toy_cfg, spm=SpmConfig(vocab_size=300, joint=False)),
        dataclasses.replace(toy_cfg, clean=CleanConfig(max_ratio=2.5)),
        dataclasses.replace(toy_cfg, max_train_pairs=100),
        dataclasses.replace(toy_cfg, src_lang="tgt", tgt_lang="src"),
        dataclasses.replace(toy_cfg, test_splits=[]),
    ]
    prints = [fingerprint(cfg) for cfg in changed]
    assert base not in prints and len(set(prints)) == len(prints)

    path = toy_root / "test.tgt"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = fingerprint(toy_cfg)
    assert touched != base
    with open(path, "a") as file:
        file.write("x\n")
    assert fingerprint(toy_cfg) not in (base, touched)


def test_changed_setting_rebuilds(toy_cfg: DataConfig):
    first = prepare(toy_cfg)
    rebuilt = prepare(dataclasses.replace(toy_cfg, spm=SpmConfig(vocab_size=295)))
    assert not rebuilt.cache_hit and rebuilt.path != first.path
    assert rebuilt.src_tokenizer.vocab_size == 295


def test_vocabulary_too_small_names_the_setting(toy_cfg: DataConfig):
    cfg = dataclasses.replace(toy_cfg, spm=SpmConfig(vocab_size=270))
    with pytest.raises(UserError, match=r"vocab_size=270 is too small .* at least \d+"):
        prepare(cfg)


def test_corpus_empty_after_cleaning(toy_cfg: DataConfig):
    cfg = dataclasses.replace(toy_cfg, clean=CleanConfig(max_chars=3))
    with pytest.raises(UserError, match=r"split 'train' .* empty after cleaning \(200 pairs read"):
        prepare(cfg)


def test_vocabulary_too_large_names_the_setting(toy_cfg: DataConfig):
    cfg = dataclasses.replace(toy_cfg, spm=SpmConfig(vocab_size=50_000))
    with pytest.raises(UserError, match=r"data\.spm\.vocab_size=50000 is too large .* at most \d+"):
        prepare(cfg)
    assert not any(Path(toy_cfg.cache_dir).glob("*.tmp-*"))


def test_evaluation_splits_are_never_filtered(toy_cfg: DataConfig, toy_root: Path):
    lines = (toy_root / "test.src").read_text().splitlines()
    lines[3] = "   "
    (toy_root / "test.src").write_text("\n".join(lines) + "\n")
    test = prepare(toy_cfg).splits["test"]
    assert len(test) == 20 and test["src"][3] == "" and test["src_ids"][3] == []
    references = (toy_root / "test.tgt").read_text().splitlines()
    assert test["ref"] == references


@pytest.mark.multi30k
def test_multi30k_statistics(multi30k_root: Path, tmp_path: Path):
    cfg = DataConfig(root=str(multi30k_root), cache_dir=str(tmp_path))
    data = prepare(cfg)
    splits = data.stats["splits"]
    assert splits["train"]["pairs_read"] == 29_000
    assert splits["val"]["pairs_kept"] == 1014 and splits["test_2016_flickr"]["pairs_kept"] == 1000
    assert splits["train"]["pairs_kept"] > 28_900
    assert 8 < splits["val"]["avg_src_subwords"] < 30
    assert data.src_tokenizer.vocab_size == 8000
    table = format_stats(data)
    assert "test_2016_flickr" in table and "joint vocabulary 8000" in table


@pytest.mark.parametrize("split", ["train", "valid"])
def test_empty_split_file_stops_preparation(toy_cfg: DataConfig, toy_root: Path, split: str):
    for lang in ("src", "tgt"):
        (toy_root / f"{split}.{lang}").write_bytes(b"")
    with pytest.raises(UserError) as error:
        prepare(toy_cfg)
    assert f"{split}.tgt have no lines" in str(error.value)
    assert f"(data.{split}_split)" in str(error.value)
    assert not any(Path(toy_cfg.cache_dir).glob("*"))  # nothing half-built is left


def test_character_model_vocabulary_too_small_names_the_setting(toy_cfg: DataConfig):
    cfg = dataclasses.replace(toy_cfg, spm=SpmConfig(vocab_size=100, model_type="char"))
    with pytest.raises(UserError, match=r"vocab_size=100 is too small .*model_type=char.* 260"):
        prepare(cfg)


def test_bad_corpus_file_is_one_line_from_the_command(tmp_path: Path, toy_root: Path):
    """A plain-text file named .gz: `nmt data` says so in one line, without a traceback."""
    for lang in ("src", "tgt"):
        for split in ("train", "valid", "test"):
            (toy_root / f"{split}.{lang}").rename(toy_root / f"{split}.{lang}.gz")
    args = [
        "data=local_files",
        f"data.root={toy_root}",
        "data.text_pattern='{split}.{lang}.gz'",  # quoted: braces are Hydra syntax
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "nmt", "data", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"nmt: error: {toy_root / 'train.src.gz'} is not gzip-compressed although its name ends "
        "in .gz: compress it (gzip), or rename it without .gz and set data.text_pattern to match"
    )


def test_sentencepiece_reads_a_fixed_sample_of_a_split_larger_than_its_input_size():
    split = datasets.Dataset.from_dict({"src": [f"s{i}" for i in range(100)],
                                        "tgt": [f"t{i}" for i in range(100)]})  # fmt: skip
    everything = list(_texts(split, "src", "tgt", limit=1000))  # fits: every row, in order
    assert everything == [*split["src"], *split["tgt"]]
    sample = list(_texts(split, "src", "tgt", limit=30, seed=1))  # 15 rows, both sides
    rows = [int(text[1:]) for text in sample[:15]]
    assert len(set(rows)) == 15 and rows == sorted(rows)
    assert sample == [*(f"s{row}" for row in rows), *(f"t{row}" for row in rows)]
    assert sample == list(_texts(split, "src", "tgt", limit=30, seed=1))
    assert sample != list(_texts(split, "src", "tgt", limit=30, seed=2))
