"""Corpus -> cleaned pairs -> SentencePiece -> encoded Arrow, cached by a fingerprint.

The cache folder `<data.cache_dir>/<data.name>-<fingerprint>/` holds everything a run needs:
`splits/` (a `DatasetDict` saved as Arrow with columns src, tgt, src_ids, tgt_ids, src_len,
tgt_len, and for validation and test splits `ref`, the raw reference line), the SentencePiece
model(s) and `meta.json` with the statistics. The fingerprint covers every input that changes
the result, so a second `make data` is a cache hit and a changed setting or corpus file
rebuilds. A build writes to a temporary folder and renames it into place, so an interrupted
build never leaves a half-written cache behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from nmt.config import DataConfig
from nmt.data.batching import column, length_array
from nmt.data.clean import DROP_RULES, clean
from nmt.data.corpus import load_split, split_signature
from nmt.data.sources import load_source, naming, source_signature
from nmt.errors import UserError
from nmt.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger(__name__)

# Bump when this module changes what it writes, so that older caches are not reused: the
# fingerprint sees settings and files, not code.
PIPELINE_VERSION = 3  # 3: duplicates across training sources, a first line's BOM dropped
# A worker process costs about a second to start: only split work across processes
# for splits with at least this many pairs per process.
MIN_PAIRS_PER_PROC = 50_000


@dataclass
class PreparedData:
    """The result of `prepare`: encoded splits and the tokenizers that made them."""

    path: Path  # the cache folder; checkpoints copy the SentencePiece models from here
    splits: datasets.DatasetDict  # memory-mapped Arrow, so a large corpus costs little RAM
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer  # the same model as src_tokenizer with a joint vocabulary
    stats: dict  # meta.json's statistics, plus how long this call took
    cache_hit: bool


def split_names(cfg: DataConfig) -> list[str]:
    """Train, validation and test splits, each once, in that order.

    Once: a corpus may validate on one of its test sets. Train first: SentencePiece learns from
    it alone, so that no validation or test sentence leaks into the vocabulary.
    """
    return list(dict.fromkeys([cfg.train_split, cfg.valid_split, *cfg.test_splits]))


def fingerprint(cfg: DataConfig) -> str:
    """A hash of everything that changes the prepared data (and nothing that does not).

    Left out on purpose: `name`, `cache_dir`, `num_proc` and the corpus folder's own path, so
    that renaming a setup, moving the corpus or using more workers reuses the cache.
    """
    # Local files (text, tsv, and those of `datasets`' json/csv/parquet/arrow builders) are keyed
    # on name, size and mtime: cheap, and an edit changes them; a hub dataset on its revision.
    # Resolving the files also reports a missing or misnamed file before any work.
    sources = {
        split: split_signature(cfg, split)
        for split in split_names(cfg)
        if not (split == cfg.train_split and cfg.train_sources)
    }
    payload = {
        "version": PIPELINE_VERSION,
        "format": cfg.format,
        "langs": [cfg.src_lang, cfg.tgt_lang],
        "splits": split_names(cfg),
        "tsv_columns": list(cfg.tsv_columns) if cfg.format == "tsv" else None,
        "max_train_pairs": cfg.max_train_pairs,
        "clean": dataclasses.asdict(cfg.clean),
        "spm": dataclasses.asdict(cfg.spm),
        "sources": sources,
    }
    if cfg.train_sources:
        payload["train_sources"] = [source_signature(cfg, source) for source in cfg.train_sources]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def prepare(cfg: DataConfig) -> PreparedData:
    """Return the prepared data for `cfg`, building and caching it unless already cached."""
    start = time.perf_counter()
    datasets.disable_progress_bars()
    path = Path(cfg.cache_dir) / f"{cfg.name}-{fingerprint(cfg)}"
    # meta.json is written last and the folder renamed into place after it, so its presence
    # means a complete build.
    cache_hit = (path / "meta.json").is_file()
    if not cache_hit:
        log.info("data cache miss: building %s", path)
        _build(cfg, path)
    meta = json.loads((path / "meta.json").read_text())
    stats = meta["stats"]
    stats["seconds"] = round(time.perf_counter() - start, 2)
    src_tokenizer = Tokenizer(path / meta["src_spm"])
    tgt_tokenizer = Tokenizer(path / meta["tgt_spm"])
    splits = datasets.load_from_disk(str(path / "splits"))
    return PreparedData(path, splits, src_tokenizer, tgt_tokenizer, stats, cache_hit)


def _num_proc(cfg: DataConfig, num_pairs: int) -> int | None:
    """Workers for `Dataset.map` over `num_pairs`; None (not 1) keeps `datasets` in-process."""
    num_proc = min(cfg.num_proc, num_pairs // MIN_PAIRS_PER_PROC)
    return num_proc if num_proc > 1 else None


def _build(cfg: DataConfig, path: Path) -> None:
    """Build the cache folder `path`: load and clean, train SentencePiece, encode, save.

    Everything is written under a temporary name first and renamed at the end, so a crash or
    Ctrl-C never leaves a folder that `prepare` would take for a finished cache. The pid in the
    name keeps two builds of the same data (two shells, or ranks of a distributed job) apart.
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        splits, split_stats = _load_and_clean(cfg, tmp / "hf")
        src_tokenizer, tgt_tokenizer = _train_tokenizers(cfg, splits[cfg.train_split], tmp)
        encoder = _Encoder(src_tokenizer.path, tgt_tokenizer.path)
        for name, split in splits.items():
            splits[name] = split.map(
                encoder, batched=True, num_proc=_num_proc(cfg, len(split)), desc=f"encode {name}"
            )
            split_stats[name]["avg_src_subwords"] = _mean(length_array(splits[name], "src_len"))
            split_stats[name]["avg_tgt_subwords"] = _mean(length_array(splits[name], "tgt_len"))
        splits.save_to_disk(str(tmp / "splits"))
        meta = {
            "fingerprint": path.name.rsplit("-", 1)[-1],
            "config": dataclasses.asdict(cfg),
            "src_spm": src_tokenizer.path.name,
            "tgt_spm": tgt_tokenizer.path.name,
            "stats": {
                "splits": split_stats,
                "src_vocab_size": src_tokenizer.vocab_size,
                "tgt_vocab_size": tgt_tokenizer.vocab_size,
                "joint_vocab": cfg.spm.joint,
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        # Intermediate Arrow files, if a loader wrote any; splits/ holds the result.
        shutil.rmtree(tmp / "hf", ignore_errors=True)
        try:
            tmp.rename(path)  # atomic within one file system
        except OSError:
            # A concurrent build of the same fingerprint renamed its folder first: its result
            # is the same as ours, so use it and let ours be deleted below.
            if not (path / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_and_clean(cfg: DataConfig, hf_cache: Path) -> tuple[datasets.DatasetDict, dict]:
    """Every split read, normalized and (training only) filtered, with counts per drop rule.

    `load_split` refuses a split with no lines, so the only way to end up empty here is a
    training split (or source) that cleaning emptied.
    """
    splits, stats = datasets.DatasetDict(), {}
    for name in split_names(cfg):
        if name == cfg.train_split and cfg.train_sources:
            splits[name], stats[name] = _load_sources(cfg, hf_cache)
            continue
        raw = load_split(cfg, name, hf_cache)
        if name == cfg.train_split and cfg.max_train_pairs is not None:
            # The first N lines of the file, before cleaning: what the setting promises, and
            # the same pairs whatever the cleaning rules drop.
            raw = raw.select(range(min(cfg.max_train_pairs, len(raw))))
        splits[name], stats[name] = _clean_split(
            cfg, raw, is_train=name == cfg.train_split, what=f"split '{name}' of data '{cfg.name}'"
        )
    return splits, stats


def _load_sources(cfg: DataConfig, hf_cache: Path) -> tuple[datasets.Dataset, dict]:
    """The training split as `data.train_sources` concatenated in order, each cleaned on its
    own so that the statistics count pairs read, kept and dropped per source.

    `data.max_train_pairs` caps the pairs read from all sources together, taken in order: a
    source after the cap is not read at all.
    """
    parts, per_source = [], {}
    seen: list[np.ndarray] = []  # pair hashes kept so far: duplicates across sources too
    budget = cfg.max_train_pairs
    for source in cfg.train_sources:
        if budget == 0:
            per_source[source.name] = _split_stats(0, 0, {})
            continue
        raw = load_source(cfg, source, hf_cache)
        if budget is not None:
            raw = raw.select(range(min(budget, len(raw))))
            budget -= len(raw)
        with naming(source):
            kept, per_source[source.name] = _clean_split(
                cfg,
                raw,
                is_train=True,
                what=f"split '{source.split or cfg.train_split}'",
                seen=seen,
            )
        if len(kept) == 0:
            log.warning("training source '%s' adds no pair: %d duplicates of earlier sources' "
                        "pairs, %d dropped by other rules", source.name,
                        per_source[source.name]["dropped"]["duplicate"],
                        len(raw) - per_source[source.name]["dropped"]["duplicate"])  # fmt: skip
        parts.append(kept)
    train = datasets.concatenate_datasets(parts)
    total = {
        "pairs_read": sum(part["pairs_read"] for part in per_source.values()),
        "pairs_kept": len(train),
        "dropped": {
            rule: sum(part["dropped"][rule] for part in per_source.values()) for rule in DROP_RULES
        },
        "sources": per_source,
    }
    return train, total


def _clean_split(
    cfg: DataConfig,
    raw: datasets.Dataset,
    *,
    is_train: bool,
    what: str,
    seen: list[np.ndarray] | None = None,
) -> tuple[datasets.Dataset, dict]:
    """One split (or training source) cleaned, and its counts; refused if nothing is kept,
    unless it is a training source whose pairs earlier sources already hold (`seen`)."""
    # Only training pairs are filtered: validation and test keep every line, in order,
    # so that line i of a prepared split is line i of its reference file.
    if not is_train:  # references are scored as they are in the file, before cleaning
        raw = raw.add_column("ref", column(raw, "tgt"))
    kept, dropped = clean(raw, cfg.clean, _num_proc(cfg, len(raw)), drop=is_train, seen=seen)
    if len(kept) == 0 and not (seen and dropped["duplicate"]):  # nothing to learn from
        raise UserError(
            f"{what} is empty after cleaning ({len(raw)} pairs read, dropped {dict(dropped)}): "
            "check the corpus (data.root, data.*_pattern, data.hub_*) or loosen data.clean.*"
        )
    return kept, _split_stats(len(raw), len(kept), dropped)


def _split_stats(num_read: int, num_kept: int, dropped: dict) -> dict:
    return {
        "pairs_read": num_read,
        "pairs_kept": num_kept,
        "dropped": {rule: dropped.get(rule, 0) for rule in DROP_RULES},
    }


def _train_tokenizers(
    cfg: DataConfig, train: datasets.Dataset, out: Path
) -> tuple[Tokenizer, Tokenizer]:
    """SentencePiece on the training split only: one joint model, or one per side.

    SentencePiece reports a vocabulary size that does not fit the text as a RuntimeError
    with C++ source locations; the ones a user causes become a `UserError` with the bound.
    """
    sample = {"limit": cfg.spm.input_sentence_size, "seed": cfg.spm.seed}
    try:
        if cfg.spm.joint:
            texts = _texts(train, "src", "tgt", **sample)
            joint = train_tokenizer(texts, out / "spm", cfg.spm)
            return joint, joint
        return (
            train_tokenizer(_texts(train, "src", **sample), out / "spm.src", cfg.spm),
            train_tokenizer(_texts(train, "tgt", **sample), out / "spm.tgt", cfg.spm),
        )
    except RuntimeError as error:
        message = str(error)
        if "Vocabulary size too high" in message:
            limit = message.rsplit("<=", 1)[-1].strip(" .")
            raise UserError(
                f"data.spm.vocab_size={cfg.spm.vocab_size} is too large for {len(train)} "
                f"training pairs: set it to at most {limit}"
            ) from None
        if "smaller than required_chars" in message:
            needed = re.search(r"(\d+) vs (\d+)", message)
            at_least = needed.group(2) if needed else "more"
            raise UserError(
                f"data.spm.vocab_size={cfg.spm.vocab_size} is too small for the characters of "
                f"the training text: set it to at least {at_least}, or lower "
                "data.spm.character_coverage"
            ) from None
        if "[(vocab_size) >= (0)]" in message:  # char and word models: no room for specials
            at_least = 4 + 256 * cfg.spm.byte_fallback
            raise UserError(
                f"data.spm.vocab_size={cfg.spm.vocab_size} is too small for "
                f"data.spm.model_type={cfg.spm.model_type}: set it to more than {at_least} "
                "(4 special pieces, and 256 byte pieces with data.spm.byte_fallback=true)"
            ) from None
        raise


def _texts(
    dataset: datasets.Dataset, *columns: str, limit: int = 0, seed: int = 0
) -> Iterator[str]:
    """Sentences of the given columns, streamed in batches rather than loaded at once.

    With `limit` > 0 and more sentences than that, only an even random sample of rows is read
    (by `seed`, in file order), enough for `limit` sentences: SentencePiece would keep no more
    than `data.spm.input_sentence_size` of them anyway, and reading 20M sentences from a 10M-pair
    split only to discard most costs minutes. A split that fits is read whole, as before.
    """
    num_rows = -(-limit // len(columns)) if limit else len(dataset)
    if num_rows < len(dataset):
        rng = np.random.default_rng(seed)
        dataset = dataset.select(np.sort(rng.choice(len(dataset), num_rows, replace=False)))
    for batch in dataset.iter(batch_size=10_000):
        for name in columns:
            yield from batch[name]


class _Encoder:
    """Batched encoding for `Dataset.map`; loads SentencePiece lazily so it pickles to workers."""

    def __init__(self, src_model: Path, tgt_model: Path) -> None:
        self.models = (src_model, tgt_model)
        self.tokenizers: tuple[Tokenizer, Tokenizer] | None = None

    def __getstate__(self) -> dict:
        # SentencePiece processors do not pickle: each worker loads its own from the paths.
        return {"models": self.models, "tokenizers": None}

    def __call__(self, batch: dict) -> dict:
        if self.tokenizers is None:
            self.tokenizers = (Tokenizer(self.models[0]), Tokenizer(self.models[1]))
        src_ids = self.tokenizers[0].encode(batch["src"])
        tgt_ids = self.tokenizers[1].encode(batch["tgt"])
        return {
            "src_ids": src_ids,
            "tgt_ids": tgt_ids,
            "src_len": [len(ids) for ids in src_ids],
            "tgt_len": [len(ids) for ids in tgt_ids],
        }


def _mean(values: np.ndarray) -> float:
    """Rounded for meta.json and the table, where more digits are noise."""
    return round(float(values.mean()), 2)


def format_stats(data: PreparedData) -> str:
    """A table of what preparation did, for the `nmt data` command and training logs.

    One row per split: pairs read and kept, pairs dropped by each cleaning rule, and average
    subwords per sentence (what `train.max_tokens` is spent on); below the training split, an
    indented row per training source.
    """
    stats = data.stats
    # One column per rule of DROP_RULES, in its order.
    rules = {"empty": "empty", "too_long": "long", "ratio": "ratio", "identical": "same",
             "non_letter": "nonlet", "duplicate": "dup"}  # fmt: skip
    lines = [
        f"{'split':<20} {'read':>9} {'kept':>9}"
        + "".join(f" {rules[rule]:>6}" for rule in DROP_RULES)
        + f" {'src sw':>7} {'tgt sw':>7}"
    ]
    for name, split in stats["splits"].items():
        dropped = split["dropped"]
        lines.append(
            f"{name:<20} {split['pairs_read']:>9} {split['pairs_kept']:>9}"
            + "".join(f" {dropped[rule]:>6}" for rule in DROP_RULES)
            + f" {split['avg_src_subwords']:>7.2f} {split['avg_tgt_subwords']:>7.2f}"
        )
        for source, counts in split.get("sources", {}).items():  # data.train_sources
            dropped = counts["dropped"]
            lines.append(
                f"{'  ' + source:<20} {counts['pairs_read']:>9} {counts['pairs_kept']:>9}"
                + "".join(f" {dropped[rule]:>6}" for rule in DROP_RULES)
            )
    vocab = (
        f"joint vocabulary {stats['src_vocab_size']}"
        if stats["joint_vocab"]
        else f"vocabulary src {stats['src_vocab_size']} / tgt {stats['tgt_vocab_size']}"
    )
    hit = "cache hit" if data.cache_hit else "cache miss (built)"
    lines.append(f"{vocab}; sw = average subwords per sentence")
    lines.append(f"{hit}: {data.path} in {stats['seconds']:.1f} s")
    return "\n".join(lines)
