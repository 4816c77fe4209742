"""Corpora in `datasets`' local layouts (json, parquet in the `translation` layout) and several
training sources in one split: what prepare builds from them, what it keys its cache on, and
the one-line errors that name the source and file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nmt.config import DataConfig, SourceConfig
from nmt.data.prepare import fingerprint, format_stats, prepare
from nmt.errors import UserError
from tests.toy import toy_pairs


def translation_rows(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"translation": {"de": src, "en": tgt}} for src, tgt in pairs]


def write_json(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in translation_rows(pairs)))
    return path


def write_parquet(path: Path, pairs: list[tuple[str, str]]) -> Path:
    pq.write_table(pa.Table.from_pylist(translation_rows(pairs)), path)
    return path


@pytest.fixture
def json_cfg(tmp_path: Path, toy_cfg: DataConfig) -> DataConfig:
    """The toy corpus as json files in the translation layout, read by the json builder."""
    files = {
        split: str(write_json(tmp_path / f"{split}.jsonl", toy_pairs(num_pairs, seed)))
        for seed, (split, num_pairs) in enumerate({"train": 60, "valid": 8, "test": 8}.items())
    }
    return dataclasses.replace(
        toy_cfg, format="hub", hub_path="json", hub_data_files=files, src_lang="de", tgt_lang="en"
    )


def test_json_corpus_is_prepared_with_every_pair(json_cfg: DataConfig):
    data = prepare(json_cfg)
    assert [len(data.splits[name]) for name in ("train", "valid", "test")] == [60, 8, 8]
    assert data.splits["test"]["ref"] == [tgt for _, tgt in toy_pairs(8, 2)]
    assert prepare(json_cfg).cache_hit


def test_edited_json_file_changes_the_fingerprint(json_cfg: DataConfig):
    before = fingerprint(json_cfg)
    train = Path(json_cfg.hub_data_files["train"])
    write_json(train, toy_pairs(61, 0))
    assert fingerprint(json_cfg) != before
    assert len(prepare(json_cfg).splits["train"]) == 61


def test_a_file_list_and_a_glob_read_several_files(json_cfg: DataConfig, tmp_path: Path):
    write_json(tmp_path / "more-1.jsonl", toy_pairs(5, 7))
    write_json(tmp_path / "more-2.jsonl", toy_pairs(5, 8))
    files = {**json_cfg.hub_data_files, "train": [str(tmp_path / "more-*.jsonl")]}
    data = prepare(dataclasses.replace(json_cfg, hub_data_files=files))
    assert data.splits["train"]["src"] == [src for src, _ in toy_pairs(5, 7) + toy_pairs(5, 8)]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"train": "missing.jsonl"}, r"missing data file .*missing\.jsonl \(data\.hub_data_files"),
        ({}, r"data\.hub_data_files has none for split 'train'.*hub_data_files\.train=<file>"),
    ],
)
def test_missing_local_data_file_is_one_line(json_cfg, tmp_path, files, message):
    kept = {k: v for k, v in json_cfg.hub_data_files.items() if k != "train"}
    files = {k: str(tmp_path / v) for k, v in files.items()}
    with pytest.raises(UserError, match=message) as error:
        fingerprint(dataclasses.replace(json_cfg, hub_data_files={**kept, **files}))
    assert "\n" not in str(error.value)


def test_bad_json_is_one_line_naming_the_file(json_cfg: DataConfig, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"translation": {"de": "a"\n')
    cfg = dataclasses.replace(
        json_cfg, hub_data_files={**json_cfg.hub_data_files, "test": str(bad)}
    )
    with pytest.raises(UserError, match=r"split 'test' of .*bad\.jsonl.*JSON parse error") as error:
        prepare(cfg)
    assert "\n" not in str(error.value)


def sources_cfg(json_cfg: DataConfig, tmp_path: Path) -> DataConfig:
    """Training from a text pair, a parquet file (first 20 pairs) and a TSV file."""
    text_root = tmp_path / "europarl"
    text_root.mkdir()
    pairs = toy_pairs(30, 3)
    (text_root / "train.de").write_text("".join(f"{src}\n" for src, _ in pairs))
    (text_root / "train.en").write_text("".join(f"{tgt}\n" for _, tgt in pairs))
    parquet = write_parquet(tmp_path / "crawl.parquet", toy_pairs(40, 4))
    (tmp_path / "news.tsv").write_text("eins zwei\tone two\n\t\ndrei\tthree\n")
    sources = [
        SourceConfig(name="europarl", format="text", root=str(text_root),
                     text_pattern="{split}.{lang}"),
        SourceConfig(name="crawl", format="hub", hub_path="parquet",
                     hub_data_files={"train": str(parquet)}, max_pairs=20),
        SourceConfig(name="news", format="tsv", root=str(tmp_path), split="news"),
    ]  # fmt: skip
    return dataclasses.replace(json_cfg, train_sources=sources)


def test_sources_are_concatenated_and_counted_each(json_cfg: DataConfig, tmp_path: Path):
    cfg = sources_cfg(json_cfg, tmp_path)
    data = prepare(cfg)
    expected = [s for s, _ in toy_pairs(30, 3) + toy_pairs(40, 4)[:20]] + ["eins zwei", "drei"]
    assert data.splits["train"]["src"] == expected
    stats = data.stats["splits"]["train"]
    assert {name: (s["pairs_read"], s["pairs_kept"]) for name, s in stats["sources"].items()} == {
        "europarl": (30, 30),
        "crawl": (20, 20),
        "news": (3, 2),
    }
    assert (stats["pairs_read"], stats["pairs_kept"], stats["dropped"]["empty"]) == (53, 52, 1)
    assert len(data.splits["valid"]) == 8  # validation still comes from data.hub_data_files
    table = format_stats(data)
    assert "  news" in table and "  crawl" in table
    capped = prepare(dataclasses.replace(cfg, max_train_pairs=40))
    counts = capped.stats["splits"]["train"]["sources"]
    assert [counts[name]["pairs_read"] for name in ("europarl", "crawl", "news")] == [30, 10, 0]


def test_duplicates_are_dropped_across_sources_too(json_cfg: DataConfig, tmp_path: Path):
    cfg = sources_cfg(json_cfg, tmp_path)
    src, tgt = toy_pairs(30, 3)[0]  # europarl's first pair, again in news, and "drei" twice
    news_tsv = f"eins zwei\tone two\n{src}\t{tgt}\ndrei\tthree\ndrei\tthree\n"
    (tmp_path / "news.tsv").write_text(news_tsv)
    clean = dataclasses.replace(cfg.clean, drop_duplicates=True)
    data = prepare(dataclasses.replace(cfg, clean=clean))
    assert data.splits["train"]["src"][-2:] == ["eins zwei", "drei"]
    assert data.splits["train"]["src"].count(src) == 1
    news = data.stats["splits"]["train"]["sources"]["news"]
    assert (news["pairs_read"], news["pairs_kept"], news["dropped"]["duplicate"]) == (4, 2, 2)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda root: (root / "europarl/train.en").write_text("one line\n"),
         r"training source 'europarl': .*train\.de has 30 lines but .*train\.en has 1 line"),
        (lambda root: (root / "europarl/train.de").write_bytes(b"ok\n\xff\n"),
         r"training source 'europarl': .*train\.de:2: invalid UTF-8 byte 0xff"),
        (lambda root: (root / "news.tsv").write_text("\t\n \t \n"),
         r"training source 'news': split 'news' is empty after cleaning \(2 pairs read"),
        (lambda root: (root / "crawl.parquet").unlink(),
         r"training source 'crawl': missing data file .*crawl\.parquet"),
    ],
)  # fmt: skip
def test_bad_source_is_one_line_naming_it(json_cfg, tmp_path, break_it, message):
    cfg = sources_cfg(json_cfg, tmp_path)
    break_it(tmp_path)
    with pytest.raises(UserError, match=message) as error:
        prepare(cfg)
    assert "\n" not in str(error.value)


def test_csv_file_with_a_column_per_language(json_cfg: DataConfig, tmp_path: Path):
    pairs = toy_pairs(12, 5)
    csv = tmp_path / "train.csv"
    csv.write_text("en,de\n" + "".join(f"{tgt},{src}\n" for src, tgt in pairs))
    source = SourceConfig(
        name="tab", format="hub", hub_path="csv", hub_data_files={"train": str(csv)}
    )
    data = prepare(dataclasses.replace(json_cfg, train_sources=[source]))
    assert list(zip(data.splits["train"]["src"], data.splits["train"]["tgt"])) == pairs


def test_empty_and_null_cells_are_empty_text(json_cfg: DataConfig, tmp_path: Path):
    pairs = toy_pairs(12, 5)
    csv = tmp_path / "train.csv"
    rows = "".join(f"{tgt},{src}\n" for src, tgt in pairs)
    csv.write_text(f"en,de\n{rows}None,Keine\nyes,\n")  # "None" is a sentence here
    source = SourceConfig(
        name="tab", format="hub", hub_path="csv", hub_data_files={"train": str(csv)}
    )
    test_file = Path(json_cfg.hub_data_files["test"])
    null_target = json.dumps({"translation": {"de": "Ein Hund", "en": None}})
    test_file.write_text(test_file.read_text() + null_target + "\n")
    data = prepare(dataclasses.replace(json_cfg, train_sources=[source]))
    train = list(zip(data.splits["train"]["src"], data.splits["train"]["tgt"]))
    assert train == [*pairs, ("Keine", "None")]  # the pair with an empty side is dropped
    assert len(data.splits["test"]) == 9 and data.splits["test"]["ref"][-1] == ""


def test_dataset_folder_is_read_offline_and_keyed_on_its_files(toy_cfg, tmp_path: Path):
    # A hub dataset's repository downloaded once (`huggingface-cli download --local-dir`).
    folder = tmp_path / "wmt-like"
    folder.mkdir()
    for seed, (split, num_pairs) in enumerate({"train": 40, "validation": 5, "test": 5}.items()):
        write_json(folder / f"{split}.jsonl", toy_pairs(num_pairs, seed))
    cfg = dataclasses.replace(
        toy_cfg, format="hub", hub_path=str(folder), src_lang="de", tgt_lang="en",
        valid_split="validation", test_splits=["test"],
    )  # fmt: skip
    data = prepare(cfg)
    assert [len(data.splits[name]) for name in ("train", "validation", "test")] == [40, 5, 5]
    (folder / ".cache").mkdir()  # huggingface-cli's own bookkeeping is not corpus data
    (folder / ".cache" / "train.jsonl.lock").write_text("")
    assert prepare(cfg).cache_hit
    write_json(folder / "train.jsonl", toy_pairs(41, 0))
    assert len(prepare(cfg).splits["train"]) == 41
