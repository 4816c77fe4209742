"""Loading raw pairs: local text pairs, TSV, hub-style `translation` datasets, and bad input
(undecodable bytes, empty files, gzip mix-ups) reported in one line; the shared line reader."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from pathlib import Path

import pytest

from nmt.config import CleanConfig, DataConfig
from nmt.data.corpus import load_split
from nmt.errors import UserError


def load(cfg: DataConfig, split: str, tmp_path: Path) -> list[tuple[str, str]]:
    dataset = load_split(cfg, split, tmp_path / "hf")
    return list(zip(dataset["src"], dataset["tgt"]))


def test_text_pair_is_read_line_by_line(toy_cfg: DataConfig, toy_root: Path, tmp_path: Path):
    pairs = load(toy_cfg, "train", tmp_path)
    src_lines = (toy_root / "train.src").read_text().splitlines()
    assert len(pairs) == 200
    assert [s for s, _ in pairs] == src_lines
    assert pairs[0][1].split() == pairs[0][0].split()[::-1]


def test_gzip_files_and_unicode_line_separators(tmp_path: Path, toy_cfg: DataConfig):
    # U+2028 and form feed are not line ends in a corpus: alignment must survive them.
    src = ["eins\u2028zwei", "drei\x0cvier", "", "fünf"]
    tgt = ["one two", "three four", "", "five"]
    for lang, lines in (("src", src), ("tgt", tgt)):
        with gzip.open(tmp_path / f"train.{lang}.gz", "wt", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")
    cfg = dataclasses.replace(toy_cfg, root=str(tmp_path), text_pattern="{split}.{lang}.gz")
    assert load(cfg, "train", tmp_path) == list(zip(src, tgt))


def test_tsv_columns(tmp_path: Path, toy_cfg: DataConfig):
    (tmp_path / "train.tsv").write_text("id1\tHallo Welt\tHello world\nid2\tJa\tYes\n")
    cfg = dataclasses.replace(toy_cfg, root=str(tmp_path), format="tsv", tsv_columns=[1, 2])
    assert load(cfg, "train", tmp_path) == [("Hallo Welt", "Hello world"), ("Ja", "Yes")]


def test_tsv_line_with_too_few_fields_is_named(tmp_path: Path, toy_cfg: DataConfig):
    (tmp_path / "train.tsv").write_text("a\tb\nonly one field\n")
    cfg = dataclasses.replace(toy_cfg, root=str(tmp_path), format="tsv")
    with pytest.raises(UserError, match=r"train\.tsv:2: 1 tab-separated field"):
        load(cfg, "train", tmp_path)


def test_missing_root_says_where_and_how(toy_cfg: DataConfig, tmp_path: Path):
    cfg = dataclasses.replace(toy_cfg, root=str(tmp_path / "nowhere"))
    with pytest.raises(
        UserError, match=r"nowhere .*does not exist.*fetch_multi30k\.sh.*NMT_DATA_DIR"
    ):
        load(cfg, "train", tmp_path)


def test_missing_language_file_is_named(toy_cfg: DataConfig, tmp_path: Path):
    cfg = dataclasses.replace(toy_cfg, tgt_lang="xx")
    with pytest.raises(UserError, match=r"missing corpus file .*train\.xx for split 'train'"):
        load(cfg, "train", tmp_path)


def test_missing_split_file_is_named(toy_cfg: DataConfig, tmp_path: Path):
    with pytest.raises(UserError, match=r"missing corpus file .*dev\.src for split 'dev'"):
        load(toy_cfg, "dev", tmp_path)


def test_line_count_mismatch_names_both_files_and_counts(toy_cfg, toy_root, tmp_path):
    with open(toy_root / "train.tgt", "a") as file:
        file.write("one more\nand another\n")
    with pytest.raises(UserError) as error:
        load(toy_cfg, "train", tmp_path)
    message = str(error.value)
    assert "train.src has 200 lines" in message and "train.tgt has 202" in message
    assert "\n" not in message


def test_undecodable_bytes_name_file_and_line(toy_cfg, toy_root, tmp_path):
    lines = (toy_root / "train.src").read_bytes().splitlines(keepends=True)
    lines[6] = b"caf\xe9 latte\n"  # Latin-1, not UTF-8
    (toy_root / "train.src").write_bytes(b"".join(lines))
    with pytest.raises(UserError, match=r"train\.src:7: invalid UTF-8 byte 0xe9 .*on_decode_error"):
        load(toy_cfg, "train", tmp_path)


def test_undecodable_bytes_replaced_and_counted_when_configured(
    toy_cfg, toy_root, tmp_path, caplog
):
    lines = (toy_root / "train.src").read_bytes().splitlines(keepends=True)
    lines[6] = b"caf\xe9 latte\n"
    (toy_root / "train.src").write_bytes(b"".join(lines))
    cfg = dataclasses.replace(toy_cfg, clean=CleanConfig(on_decode_error="replace"))
    with caplog.at_level(logging.WARNING):
        pairs = load(cfg, "train", tmp_path)
    assert len(pairs) == 200 and pairs[6][0] == "caf\ufffd latte"
    assert "replaced undecodable bytes on 1 lines (the first is line 7)" in caplog.text


def test_edited_file_is_read_again(toy_cfg, toy_root, tmp_path):
    first = load(toy_cfg, "valid", tmp_path)
    write = (toy_root / "valid.src").read_text().replace("alpha", "ALPHA")
    (toy_root / "valid.src").write_text(write)
    second = load(toy_cfg, "valid", tmp_path)
    assert first != second and any("ALPHA" in s for s, _ in second)


def test_hub_translation_column(tmp_path: Path, toy_cfg: DataConfig):
    # A local builder exercises the same path as load_dataset("wmt14", "de-en").
    rows = [
        {"translation": {"de": "Hallo", "en": "Hello"}},
        {"translation": {"de": "Ja", "en": "Yes"}},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    cfg = dataclasses.replace(
        toy_cfg,
        format="hub",
        hub_path="json",
        hub_data_files={"train": str(path)},
        src_lang="de",
        tgt_lang="en",
    )
    assert load(cfg, "train", tmp_path) == [("Hallo", "Hello"), ("Ja", "Yes")]
    with pytest.raises(UserError, match=r"no language \['fr'\].*data\.src_lang"):
        load(dataclasses.replace(cfg, src_lang="fr"), "train", tmp_path)


def test_unreachable_hub_dataset_is_one_line_error(tmp_path: Path, toy_cfg: DataConfig):
    cfg = dataclasses.replace(toy_cfg, format="hub", hub_path="nmt-test/does-not-exist")
    with pytest.raises(UserError) as error:
        load(cfg, "train", tmp_path)
    assert "nmt-test/does-not-exist" in str(error.value) and "\n" not in str(error.value)


def test_empty_files_are_named(toy_cfg, toy_root, tmp_path):
    for lang in ("src", "tgt"):
        (toy_root / f"valid.{lang}").write_bytes(b"")
    with pytest.raises(UserError) as error:
        load(toy_cfg, "valid", tmp_path)
    message = str(error.value)
    assert "valid.src and" in message and "valid.tgt have no lines" in message
    assert "split 'valid' (data.valid_split) needs at least one sentence pair" in message


def test_one_empty_side_is_named(toy_cfg, toy_root, tmp_path):
    (toy_root / "train.tgt").write_bytes(b"")
    with pytest.raises(UserError, match=r"train\.src has 200 lines but .*train\.tgt has no lines"):
        load(toy_cfg, "train", tmp_path)


def test_empty_tsv_file_is_named(tmp_path: Path, toy_cfg: DataConfig):
    (tmp_path / "test.tsv").write_bytes(b"")
    cfg = dataclasses.replace(toy_cfg, root=str(tmp_path), format="tsv")
    with pytest.raises(UserError, match=r"test\.tsv has no lines: .*\(data\.test_splits\)"):
        load(cfg, "test", tmp_path)


def gzip_pair(root: Path, split: str = "train", num_lines: int = 2000) -> None:
    for lang in ("src", "tgt"):
        with gzip.open(root / f"{split}.{lang}.gz", "wt", encoding="utf-8") as file:
            file.writelines(f"sentence {i} {lang}\n" for i in range(num_lines))


def test_plain_text_named_gz_is_named(tmp_path: Path, toy_cfg: DataConfig):
    gzip_pair(tmp_path)
    (tmp_path / "train.tgt.gz").write_text("not compressed\n")
    cfg = dataclasses.replace(toy_cfg, root=str(tmp_path), text_pattern="{split}.{lang}.gz")
    with pytest.raises(UserError) as error:
        load(cfg, "train", tmp_path)
    assert "train.tgt.gz is not gzip-compressed" in str(error.value)
    assert "data.text_pattern" in str(error.value)


def test_gzip_file_without_gz_name_is_named(tmp_path: Path, toy_cfg: DataConfig):
    gzip_pair(tmp_path)
    for lang in ("src", "tgt"):
        (tmp_path / f"train.{lang}.gz").rename(tmp_path / f"train.{lang}")
    cfg = dataclasses.replace(toy_cfg, root=str(tmp_path))
    with pytest.raises(UserError, match=r"train\.src is gzip-compressed but its name does not"):
        load(cfg, "train", tmp_path)


def test_truncated_gzip_file_is_named(tmp_path: Path, toy_cfg: DataConfig):
    gzip_pair(tmp_path)
    path = tmp_path / "train.src.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cfg = dataclasses.replace(toy_cfg, root=str(tmp_path), text_pattern="{split}.{lang}.gz")
    with pytest.raises(UserError, match=r"train\.src\.gz is truncated: its gzip stream ends"):
        load(cfg, "train", tmp_path)


def test_bad_file_name_pattern_is_named(toy_cfg, tmp_path):
    cfg = dataclasses.replace(toy_cfg, text_pattern="{split}.{language}")
    with pytest.raises(UserError, match=r"data\.text_pattern is not a file name pattern"):
        load(cfg, "train", tmp_path)
