"""Fixtures for the data tests: a toy corpus on disk and the settings that read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmt.config import DataConfig
from tests.toy import toy_data_config, write_toy_corpus


@pytest.fixture
def toy_root(tmp_path: Path) -> Path:
    """A folder with train/valid/test `.src`/`.tgt` files (200/20/20 pairs)."""
    return write_toy_corpus(tmp_path / "corpus")


@pytest.fixture
def toy_cfg(toy_root: Path, tmp_path: Path) -> DataConfig:
    return toy_data_config(toy_root, tmp_path / "cache")
