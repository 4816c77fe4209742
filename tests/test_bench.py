"""The benchmark scripts behind `make bench`: they run on CPU, print a table, write JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / name), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bench_train_measures_each_model_length_and_mode(tmp_path: Path):
    output = tmp_path / "train.json"
    out = run_script("bench_train.py", "--device", "cpu", "--models", "transformer_small",
                     "rnn_bahdanau", "--lengths", "5", "9", "--max-tokens", "200",
                     "--steps", "1", "--warmup", "1", "--output", str(output))  # fmt: skip
    record = json.loads(output.read_text())
    rows = record["results"]
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("transformer_small", "16x6"), ("transformer_small", "10x10"),
        ("rnn_bahdanau", "16x6"), ("rnn_bahdanau", "10x10"),
    ]  # fmt: skip
    for row in rows:
        assert row["src_tgt_tokens_per_s"] == 2 * row["tgt_tokens_per_s"] > 0
        assert row["peak_memory_gib"] > 0 and row["parameters"] > 1_000_000
    assert "tgt tok/s" in out and "transformer_small" in out


def test_bench_decode_compares_cache_with_recomputing_the_prefix(tmp_path: Path):
    output = tmp_path / "decode.json"
    out = run_script("bench_decode.py", "--device", "cpu", "--sentences", "4", "--length", "4",
                     "--batch-sizes", "2", "--beams", "1", "3", "--no-cache",
                     "--output", str(output))  # fmt: skip
    rows = json.loads(output.read_text())["results"]
    assert [(r["beam"], r["mode"]) for r in rows] == [
        (1, "cache"), (1, "no cache"), (3, "cache"), (3, "no cache")
    ]  # fmt: skip
    assert all(r["sentences_per_s"] > 0 and r["tgt_tokens_per_s"] > 0 for r in rows)
    # the same search with and without the cache: the same number of output tokens
    assert (
        rows[0]["tgt_tokens"] == rows[1]["tgt_tokens"]
        and rows[2]["tgt_tokens"] == rows[3]["tgt_tokens"]
    )
    assert "sent/s" in out


def test_bench_data_measures_preparation_and_training_start(tmp_path: Path):
    from tests.toy import write_toy_corpus

    source = write_toy_corpus(tmp_path / "toy")
    output = tmp_path / "data.json"
    out = run_script("bench_data.py", "--sizes", "300", "--source", str(source),
                     "--langs", "src", "tgt", "--vocab-size", "300", "--no-baseline",
                     "--work", str(tmp_path / "work"), "--output", str(output))  # fmt: skip
    record = json.loads(output.read_text())
    rows = record["results"]
    assert [(r["pairs"], r["stage"]) for r in rows] == [(300, "prepare"), (300, "train start")]
    for row in rows:
        assert row["seconds"] > 0 and row["peak_rss_mb"] > 50 and row["peak_tree_rss_mb"] > 0
        assert 0 < row["peak_anon_rss_mb"] <= row["peak_rss_mb"]
    assert 0 < rows[1]["first_step_s"] < rows[1]["seconds"]
    assert record["cpu"] in out and "train start" in out
    assert not (tmp_path / "work" / "pairs_300").exists()  # generated corpora are removed
