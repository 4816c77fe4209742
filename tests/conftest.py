"""Shared fixtures: one CPU thread per test, the tiny model sizes the tests build, and where the
Multi30k corpus is (with a skip that says why when it is absent)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nmt.config import ModelConfig  # imports neither `datasets` nor the hub client

# Nothing in the tests may wait on the network (set before `datasets` is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Tests send Ctrl-C to the trainings and translations they start. A test run started as a
# background job of a script inherits an ignored SIGINT, which its children would inherit too
# (and rightly keep ignoring): give this process, and so every child, the usual Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO_ROOT = Path(__file__).resolve().parents[1]
MULTI30K_ROOT = Path(os.environ.get("NMT_DATA_DIR", REPO_ROOT.parent / "shared/data/multi30k"))

# Small enough for milliseconds per forward pass, yet every path runs: 2 layers per stack, 4
# heads, and sizes that differ (E 16, H 32, A 24, FFN 48) so a mixed-up dimension fails.
TINY_MODEL_CONFIG = ModelConfig(
    embed_size=16,
    hidden_size=32,
    attention_size=24,
    num_heads=4,
    ffn_size=48,
    num_encoder_layers=2,
    num_decoder_layers=2,
    max_positions=64,
)


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Every test, and every fixture of any scope, runs on one intra-op thread (restored at the
    end): the tests' tensors are tiny, so more threads only add synchronisation, and on a busy
    shared CPU spinning OpenMP threads turn a 3 ms forward pass into 400 ms."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    """`TINY_MODEL_CONFIG`, for either architecture: set `arch` with `dataclasses.replace`."""
    return TINY_MODEL_CONFIG


@pytest.fixture
def multi30k_root() -> Path:
    """The Multi30k folder (tests using it are marked `multi30k`)."""
    if not (MULTI30K_ROOT / "train.de.gz").is_file():
        pytest.skip(
            f"Multi30k corpus not found at {MULTI30K_ROOT}: set NMT_DATA_DIR or see "
            "scripts/fetch_multi30k.sh"
        )
    return MULTI30K_ROOT
