"""A small synthetic parallel corpus (a word-reversal task) in the layouts `nmt.data` reads.

Reversal makes the expected attention an anti-diagonal, so heatmaps of a trained toy model
are easy to judge by eye; tests/models/test_reversal.py checks that both architectures learn it.
"""

from __future__ import annotations

import random
from pathlib import Path

from nmt.config import CleanConfig, DataConfig, SpmConfig

WORDS = [
    *("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"),
    *("iota", "kappa", "lambda", "mu", "nu", "xi", "omicron"),
]
SPLIT_SIZES = {"train": 200, "valid": 20, "test": 20}
# A SentencePiece BPE vocabulary this size, trained on the toy corpus, keeps every word one piece
# (at 80, "eta" is still two), so target token i mirrors source token n - 1 - i exactly.
WORD_VOCAB_SIZE = 100


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


def write_toy_corpus(root: Path, sizes: dict[str, int] = SPLIT_SIZES) -> Path:
    """train/valid/test `.src`/`.tgt` files under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for seed, (split, num_pairs) in enumerate(sizes.items()):
        write_text_pair(root, split, toy_pairs(num_pairs, seed))
    return root


def toy_data_config(root: Path, cache_dir: Path, vocab_size: int = 300) -> DataConfig:
    """Settings that read a toy corpus as `data=local_files` would."""
    return DataConfig(
        name="toy",
        format="text",
        root=str(root),
        src_lang="src",
        tgt_lang="tgt",
        text_pattern="{split}.{lang}",
        train_split="train",
        valid_split="valid",
        test_splits=["test"],
        cache_dir=str(cache_dir),
        spm=SpmConfig(vocab_size=vocab_size),
        # A palindrome's reversal is itself: a real pair of this task, not a copied line.
        clean=CleanConfig(drop_identical=False),
    )
