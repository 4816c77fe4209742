"""Normalize sentence pairs and drop the ones no model should learn from, counting each rule.

The rules are those WMT-scale corpora need: empty, overlong and misaligned (length ratio)
pairs, copies (source equals target), lines that are mostly digits, punctuation or symbols,
and optionally exact duplicates. Per-pair rules run in `Dataset.map` workers; duplicates are
found afterwards over one 8-byte hash per pair, so memory stays bounded at 10M pairs.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nmt.config import CleanConfig
from nmt.config_checks import CHOICES
from nmt.errors import UserError

# The rules in the order they are checked; a pair is counted under the first that drops it.
DROP_RULES = ("empty", "too_long", "ratio", "identical", "non_letter", "duplicate")
# Unicode category Cc (C0 and C1 controls) less whitespace, which `normalize` folds to spaces.
_CONTROL_CHARS = {
    code: None for code in [*range(0x20), *range(0x7F, 0xA0)] if not chr(code).isspace()
}


def has_control_chars(text: str) -> bool:
    """Whether `normalize` would remove characters from `text` (C0/C1 controls)."""
    return text != text.translate(_CONTROL_CHARS)


def normalize(text: str, form: str) -> str:
    """Unicode `form` (or none), control characters removed, whitespace runs made one space."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    if not text.isprintable():  # rare; translating every line would cost a dict lookup a char
        text = text.translate(_CONTROL_CHARS)
    return " ".join(text.split())


def drop_rule(src: str, tgt: str, cfg: CleanConfig, non_letter: float | None = None) -> str:
    """The first per-pair rule of `DROP_RULES` that rejects a normalized pair, or "" to keep
    it ("duplicate" needs the whole split: `clean` applies it). `non_letter` is the larger
    `non_letter_share` of the two sides, when the caller has it for a whole batch."""
    if not src or not tgt:
        return "empty"
    shorter, longer = sorted((len(src), len(tgt)))
    if longer > cfg.max_chars:
        return "too_long"
    if longer >= cfg.ratio_min_chars and longer > cfg.max_ratio * shorter:
        return "ratio"
    if cfg.drop_identical and src == tgt:
        return "identical"
    if non_letter is None:
        non_letter = max(non_letter_share([src, tgt]))
    if non_letter > cfg.max_non_letter:
        return "non_letter"
    return ""


def non_letter_share(texts: list[str]) -> list[float]:
    """For each normalized text, the share of its non-space characters that are not letters
    (Unicode L*, and the combining marks M* with which many scripts write vowels). Counted by
    Arrow's compute kernels, a whole batch at a time; an empty text counts as 0."""
    array = pa.array(texts, type=pa.string())
    # Matching the few non-letters is ~25x faster than matching every letter.
    non_letters = pc.count_substring_regex(array, r"[^\pL\pM ]")
    non_space = pc.subtract(pc.utf8_length(array), pc.count_substring(array, " "))
    share = pc.divide(pc.cast(non_letters, pa.float64()), pc.max_element_wise(non_space, 1))
    return share.to_pylist()


def pair_hash(src: str, tgt: str) -> int:
    """A signed 64-bit hash of a pair, the same in every process (unlike `hash`). Two distinct
    pairs share one with probability about n²/2^65: ~3e-6 among 10M pairs."""
    digest = hashlib.blake2b(f"{src}\t{tgt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def clean(
    dataset: datasets.Dataset,
    cfg: CleanConfig,
    num_proc: int | None = None,
    drop: bool = True,
    *,
    seen: list[np.ndarray] | None = None,
) -> tuple[datasets.Dataset, Counter]:
    """Normalize both sides of every pair and, if `drop`, drop pairs by `DROP_RULES`.

    Returns the kept pairs and how many pairs each rule dropped. Without `drop` (validation
    and test) every pair is kept, in order. `seen` carries the pair hashes kept by earlier
    calls (the training sources before this one), so that a duplicate is one of any earlier
    pair of the split, not only of its own source; this call adds its own.
    """
    _check_normalization(cfg)
    hashes = drop and cfg.drop_duplicates
    # The rule is stored as its 1-based position in DROP_RULES (0 = keep): one byte a pair,
    # read back as a NumPy array rather than a list of strings.
    codes = {rule: code for code, rule in enumerate(DROP_RULES, start=1)}
    features = datasets.Features(
        {
            **dataset.features,
            "src": datasets.Value("string"),
            "tgt": datasets.Value("string"),
            "drop": datasets.Value("int8"),
            **({"hash": datasets.Value("int64")} if hashes else {}),
        }
    )

    def judge(batch: dict) -> dict:
        src = [normalize(text, cfg.normalization) for text in batch["src"]]
        tgt = [normalize(text, cfg.normalization) for text in batch["tgt"]]
        if drop:
            shares = map(max, non_letter_share(src), non_letter_share(tgt))
            judged = zip(src, tgt, shares)
            rules = [codes.get(drop_rule(s, t, cfg, share), 0) for s, t, share in judged]
        else:
            rules = [0] * len(src)
        judged = {**batch, "src": src, "tgt": tgt, "drop": rules}
        if hashes:
            judged["hash"] = [pair_hash(s, t) for s, t in zip(src, tgt)]
        return judged

    judged = dataset.map(judge, batched=True, num_proc=num_proc, features=features,
                         desc="clean")  # fmt: skip
    table = judged.with_format("numpy")
    rule_codes = np.asarray(table["drop"][:], dtype=np.int8)
    if hashes:
        pair_hashes = np.asarray(table["hash"][:])
        rule_codes[_repeats(pair_hashes, rule_codes == 0, seen or [])] = codes["duplicate"]
        if seen is not None:
            seen.append(pair_hashes[rule_codes == 0])
        judged = judged.remove_columns("hash")
    counts = np.bincount(rule_codes, minlength=len(DROP_RULES) + 1)
    dropped = Counter({rule: int(counts[code]) for rule, code in codes.items() if counts[code]})
    kept = judged.remove_columns("drop")
    if dropped:
        kept = kept.select(np.flatnonzero(rule_codes == 0))
    return kept, dropped


def _check_normalization(cfg: CleanConfig) -> None:
    """Checked here too, for callers without a Config."""
    forms = CHOICES["data.clean.normalization"]
    if cfg.normalization not in forms:
        raise UserError(
            f"data.clean.normalization={cfg.normalization} is not a choice: set it to one of "
            f"{', '.join(forms)}"
        )


def _repeats(hashes: np.ndarray, candidates: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """Rows among `candidates` (a mask) whose hash an earlier candidate row, or `seen` (the
    hashes earlier training sources kept), already has."""
    rows = np.flatnonzero(candidates)
    _, first = np.unique(hashes[rows], return_index=True)  # index of each hash's first row
    repeat = np.ones(len(rows), dtype=bool)
    repeat[first] = False
    if seen:
        repeat |= np.isin(hashes[rows], np.concatenate(seen))
    return rows[repeat]
