"""Cleaning: normalization and the drop rules, each counted."""

from __future__ import annotations

import unicodedata

import datasets
import pytest

from nmt.config import CleanConfig
from nmt.data.clean import clean, drop_rule, normalize
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
