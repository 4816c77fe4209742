"""A small local parallel corpus (a word-reversal task) in the layouts `nmt.data` reads."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from nmt.config import DataConfig, SpmConfig

WORDS = [
    *("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"),
    *("iota", "kappa", "lambda", "mu", "nu", "xi", "omicron"),
]


def toy_pairs(num_pairs: int, seed: int = 0) -> list[tuple[str, str]]:
    """Sentences of random words and their reversal."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(num_pairs):
        words = rng.choices(WORDS, k=rng.randint(3, 9))
        pairs.append((" ".join(words), " ".join(reversed(words))))
    return pairs


def write_text_pair(root: Path, split: str, pairs: list[tuple[str, str]]) -> None:
    (root / f"{split}.src").write_text("".join(f"{s}\n" for s, _ in pairs), encoding="utf-8")
    (root / f"{split}.tgt").write_text("".join(f"{t}\n" for _, t in pairs), encoding="utf-8")


@pytest.fixture
def toy_root(tmp_path: Path) -> Path:
    """A folder with train/valid/test `.src`/`.tgt` files (200/20/20 pairs)."""
    root = tmp_path / "corpus"
    root.mkdir()
    for split, num_pairs, seed in (("train", 200, 0), ("valid", 20, 1), ("test", 20, 2)):
        write_text_pair(root, split, toy_pairs(num_pairs, seed))
    return root


@pytest.fixture
def toy_cfg(toy_root: Path, tmp_path: Path) -> DataConfig:
    """Settings that read `toy_root` as `data=local_files` would."""
    return DataConfig(
        name="toy",
        format="text",
        root=str(toy_root),
        src_lang="src",
        tgt_lang="tgt",
        text_pattern="{split}.{lang}",
        train_split="train",
        valid_split="valid",
        test_splits=["test"],
        cache_dir=str(tmp_path / "cache"),
        spm=SpmConfig(vocab_size=300),
    )
