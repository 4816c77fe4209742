"""Normalize sentence pairs and drop the ones no model should learn from, counting each rule."""

from __future__ import annotations

import unicodedata
from collections import Counter

import datasets

from nmt.config import CleanConfig
from nmt.config_checks import CHOICES
from nmt.errors import UserError

# The rules in the order they are checked; a pair is counted under the first that drops it.
DROP_RULES = ("empty", "too_long", "ratio")
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
    return " ".join(text.translate(_CONTROL_CHARS).split())


def drop_rule(src: str, tgt: str, cfg: CleanConfig) -> str:
    """The first rule of `DROP_RULES` that rejects a normalized pair, or "" to keep it."""
    if not src or not tgt:
        return "empty"
    shorter, longer = sorted((len(src), len(tgt)))
    if longer > cfg.max_chars:
        return "too_long"
    if longer >= cfg.ratio_min_chars and longer > cfg.max_ratio * shorter:
        return "ratio"
    return ""


def clean(
    dataset: datasets.Dataset, cfg: CleanConfig, num_proc: int | None = None, drop: bool = True
) -> tuple[datasets.Dataset, Counter]:
    """Normalize both sides of every pair and, if `drop`, drop pairs by `DROP_RULES`.

    Returns the kept pairs and how many pairs each rule dropped.
    """
    forms = CHOICES["data.clean.normalization"]  # checked here too for callers without a Config
    if cfg.normalization not in forms:
        raise UserError(
            f"data.clean.normalization={cfg.normalization} is not a choice: set it to one of "
            f"{', '.join(forms)}"
        )

    def judge(batch: dict) -> dict:
        src = [normalize(text, cfg.normalization) for text in batch["src"]]
        tgt = [normalize(text, cfg.normalization) for text in batch["tgt"]]
        rules = [drop_rule(s, t, cfg) if drop else "" for s, t in zip(src, tgt)]
        return {"src": src, "tgt": tgt, "drop": rules}

    judged = dataset.map(judge, batched=True, num_proc=num_proc, desc="clean")
    dropped = Counter(rule for rule in judged["drop"][:] if rule)  # [:] reads it at once
    kept = judged.filter(
        lambda drop: [not rule for rule in drop], input_columns="drop", batched=True
    )
    return kept.remove_columns("drop"), dropped
