"""The `nmt` command as a user runs it: statistics, cache hits, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.toy import write_toy_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_nmt(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nmt", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def local_corpus(tmp_path: Path) -> list[str]:
    root = write_toy_corpus(tmp_path / "corpus", {"train": 100, "valid": 10, "test": 10})
    return [
        "data=local_files",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.spm.vocab_size=300",
    ]


def test_data_prints_statistics_then_hits_the_cache(tmp_path: Path):
    args = local_corpus(tmp_path)
    first = run_nmt("data", *args)
    assert first.returncode == 0, first.stderr
    assert "train" in first.stdout and "cache miss" in first.stdout
    assert "joint vocabulary 300" in first.stdout
    second = run_nmt("data", *args)
    assert second.returncode == 0 and "cache hit" in second.stdout
    assert not (REPO_ROOT / ".hydra").exists()


def test_user_mistakes_are_one_line_errors(tmp_path: Path):
    args = local_corpus(tmp_path)
    for bad, expected in (
        ([f"data.root={tmp_path / 'missing'}"], "does not exist"),
        (["data.tgt_lang=xx"], "missing corpus file"),
        (["data.spm.vocab_size=100000"], "data.spm.vocab_size=100000 is too large"),
    ):
        result = run_nmt("data", *args, *bad)
        assert result.returncode == 2
        errors = [line for line in result.stderr.splitlines() if line.startswith("nmt: error:")]
        assert len(errors) == 1 and expected in errors[0]
        assert "Traceback" not in result.stderr


def test_missing_required_setting_is_one_line(tmp_path: Path):
    result = run_nmt("data", "data=local_files")
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "nmt: error: setting data.root is required: add data.root=<value>"
    )


def test_typo_in_override_is_hydra_error():
    result = run_nmt("data", "data.spm.vocab_sise=10")
    assert result.returncode == 1
    assert "Key 'vocab_sise' not in 'SpmConfig'" in result.stderr


def test_usage_and_unknown_command():
    assert "usage: nmt <command>" in run_nmt("--help").stdout
    result = run_nmt("trian")
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr
