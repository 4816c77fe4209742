"""Cleaning: normalization and the drop rules, each counted."""

from __future__ import annotations

import unicodedata

import datasets
import pytest

from nmt.config import CleanConfig
from nmt.data.clean import clean, drop_rule, non_letter_share, normalize
from nmt.errors import UserError


def test_normalize_composes_strips_and_collapses_whitespace():
    decomposed = "Cafe\u0301  au\tlait \u2028 ok\x07 "
    assert unicodedata.normalize("NFC", "Cafe\u0301") != "Cafe\u0301"
    assert normalize(decomposed, "NFC") == "Café au lait ok"
    assert normalize("Cafe\u0301", "none") == "Cafe\u0301"


def test_drop_rules():
    cfg = CleanConfig(max_chars=30, max_ratio=2.0, ratio_min_chars=10)
    assert drop_rule("", "x", cfg) == "empty"
    assert drop_rule("x", "", cfg) == "empty"
    assert drop_rule("a" * 31, "a" * 30, cfg) == "too_long"
    assert drop_rule("a" * 5, "a" * 11, cfg) == "ratio"
    assert drop_rule("a", "abc", cfg) == ""  # short sides: the ratio is not judged
    assert drop_rule("a" * 10, "a" * 20, cfg) == ""


def test_clean_counts_each_rule_and_keeps_order():
    pairs = [
        ("  Hallo  Welt ", "Hello world"),
        ("", "empty source"),
        ("x" * 50, "y" * 50),
        ("kurz", "this target is far far too long for that"),
        ("Ja", "Yes"),
    ]
    dataset = datasets.Dataset.from_dict(
        {"src": [s for s, _ in pairs], "tgt": [t for _, t in pairs]}
    )
    kept, dropped = clean(dataset, CleanConfig(max_chars=40, max_ratio=3.0, ratio_min_chars=20))
    assert kept["src"] == ["Hallo Welt", "Ja"] and kept["tgt"] == ["Hello world", "Yes"]
    assert dropped == {"empty": 1, "too_long": 1, "ratio": 1}
    assert kept.column_names == ["src", "tgt"]


def test_clean_without_drop_only_normalizes():
    dataset = datasets.Dataset.from_dict({"src": ["", " a  b "], "tgt": ["x", "c"]})
    kept, dropped = clean(dataset, CleanConfig(), drop=False)
    assert kept["src"] == ["", "a b"] and not dropped


def test_unknown_normalization_names_the_setting_and_the_choices():
    dataset = datasets.Dataset.from_dict({"src": ["a"], "tgt": ["b"]})
    with pytest.raises(UserError, match=r"normalization=NFX is not a choice: .* NFKD, none$"):
        clean(dataset, CleanConfig(normalization="NFX"))


def test_identical_and_non_letter_rules_are_counted_and_configurable():
    cfg = CleanConfig(max_non_letter=0.5)
    assert drop_rule("Guten Tag", "Guten Tag", cfg) == "identical"
    assert drop_rule("Guten Tag", "Guten Tag", CleanConfig(drop_identical=False)) == ""
    assert drop_rule("| 12.5 | 3,7 | x |", "| 12.5 | 3,7 | y |", cfg) == "non_letter"
    assert drop_rule("Zimmer 12", "room 12", cfg) == ""  # a few digits are fine
    assert drop_rule("| 12.5 | x |", "| 12.5 | y |", CleanConfig(max_non_letter=1.0)) == ""


def test_non_letter_share_counts_any_script_and_ignores_spaces():
    shares = non_letter_share(["Straße 1", "中文 。", "!!", "", "a b"])
    assert shares == [pytest.approx(1 / 7), pytest.approx(1 / 3), 1.0, 0.0, 0.0]


def make_pairs(pairs: list[tuple[str, str]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"src": [s for s, _ in pairs], "tgt": [t for _, t in pairs]})


def test_duplicates_keep_the_first_normalized_pair_and_only_when_asked():
    pairs = [
        ("ein Hund", "a dog"),
        ("eine Katze", "a cat"),
        ("ein  Hund ", "a dog"),  # the same pair once normalized
        ("ein Hund", "a dog."),  # another target: not a duplicate
        ("", "a cat"),  # dropped as empty, so not counted again below
        ("", "a cat"),
        ("eine Katze", "a cat"),
    ]
    kept, dropped = clean(make_pairs(pairs), CleanConfig(drop_duplicates=True))
    assert list(zip(kept["src"], kept["tgt"])) == [
        ("ein Hund", "a dog"), ("eine Katze", "a cat"), ("ein Hund", "a dog.")
    ]  # fmt: skip
    assert dropped == {"duplicate": 2, "empty": 2}
    kept, dropped = clean(make_pairs(pairs), CleanConfig())  # off by default
    assert len(kept) == 5 and dropped == {"empty": 2}
    # validation and test splits keep every line, duplicates and copies included
    kept, dropped = clean(make_pairs([*pairs, ("ja", "ja")]), CleanConfig(drop_duplicates=True),
                          drop=False)  # fmt: skip
    assert len(kept) == 8 and not dropped and kept.column_names == ["src", "tgt"]


def test_clean_keeps_extra_columns_with_the_kept_rows():
    dataset = make_pairs([("a", "b"), ("", "c"), ("d", "e")]).add_column("ref", ["1", "2", "3"])
    kept, _ = clean(dataset, CleanConfig(), num_proc=2)
    assert kept["ref"] == ["1", "3"] and kept.column_names == ["src", "tgt", "ref"]


def test_combining_marks_count_as_letters():
    assert non_letter_share(["नमस्ते दुनिया", "Cafe\u0301"]) == [0.0, 0.0]
