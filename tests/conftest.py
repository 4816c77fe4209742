"""Shared fixtures: where the Multi30k corpus is, and a skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MULTI30K_ROOT = Path(os.environ.get("NMT_DATA_DIR", REPO_ROOT.parent / "shared/data/multi30k"))


@pytest.fixture
def multi30k_root() -> Path:
    """The Multi30k folder (tests using it are marked `multi30k`)."""
    if not (MULTI30K_ROOT / "train.de.gz").is_file():
        pytest.skip(
            f"Multi30k corpus not found at {MULTI30K_ROOT}: set NMT_DATA_DIR or see "
            "scripts/fetch_multi30k.sh"
        )
    return MULTI30K_ROOT


# Nothing in the tests may wait on the network (set before `datasets` is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
