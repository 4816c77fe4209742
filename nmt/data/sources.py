"""Several corpora in one training split (`data.train_sources`), each read by `nmt.data.corpus`.

A source is read as if it were the whole of `data`: its own keys replace the matching
`data.*` keys and its split becomes the training split, so every layout's loader, check and
error message serves sources unchanged. Errors say which source they come from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets

from nmt.config import DataConfig, SourceConfig
from nmt.data.corpus import load_split, split_signature
from nmt.errors import UserError

# Keys a source takes from `data.*` when it leaves them null; the hub keys are not among them.
INHERITED = ("format", "root", "text_pattern", "tsv_pattern", "tsv_columns")


def source_config(cfg: DataConfig, source: SourceConfig) -> DataConfig:
    """The settings that read `source` as the training split of a one-corpus `cfg`."""
    own = {key: getattr(source, key) for key in INHERITED if getattr(source, key) is not None}
    return dataclasses.replace(
        cfg,
        **own,
        train_split=source.split or cfg.train_split,
        hub_path=source.hub_path,
        hub_name=source.hub_name,
        hub_revision=source.hub_revision,
        hub_data_files=source.hub_data_files,
        train_sources=[],
    )


def source_signature(cfg: DataConfig, source: SourceConfig) -> dict:
    """What identifies a source's pairs for the data cache (see `corpus.split_signature`)."""
    resolved = source_config(cfg, source)
    with naming(source):
        files = split_signature(resolved, resolved.train_split)
    return {
        "name": source.name,
        "format": resolved.format,
        "split": resolved.train_split,
        "tsv_columns": list(resolved.tsv_columns) if resolved.format == "tsv" else None,
        "max_pairs": source.max_pairs,
        "files": files,
    }


def load_source(cfg: DataConfig, source: SourceConfig, cache_dir: Path) -> datasets.Dataset:
    """The raw pairs of one source (columns `src`, `tgt`), at most `source.max_pairs`."""
    resolved = source_config(cfg, source)
    with naming(source):
        raw = load_split(resolved, resolved.train_split, cache_dir)
    if source.max_pairs is not None:
        raw = raw.select(range(min(source.max_pairs, len(raw))))
    return raw


@contextmanager
def naming(source: SourceConfig) -> Iterator[None]:
    """Prefix a `UserError` raised inside with the source it concerns, keeping it one line."""
    try:
        yield
    except UserError as error:
        raise UserError(f"training source '{source.name}': {error}") from None
