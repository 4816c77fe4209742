"""Checkpoints are atomic, pruned to the last K, averaged correctly, and fail clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import (
    average_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    step_checkpoints,
)
from nmt.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def state(value: float, step: int) -> dict:
    return {"model": {"w": torch.full((3,), value), "n": torch.tensor(step)}, "step": step}


def test_interrupted_write_leaves_previous_checkpoint_loadable(tmp_path: Path, monkeypatch):
    path = tmp_path / "step_1.pt"
    save_checkpoint(state(1.0, 1), path)

    def crash_mid_write(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(state(2.0, 1), path)
    assert load_checkpoint(path)["model"]["w"].tolist() == [1.0] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["step_1.pt"]


def test_leftover_temporary_file_is_ignored(tmp_path: Path):
    save_checkpoint(state(1.0, 10), tmp_path / "step_10.pt")
    (tmp_path / ".step_20.pt.tmp-999").write_bytes(b"killed while writing")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_10.pt"
    assert load_checkpoint(tmp_path)["step"] == 10


def test_prune_keeps_the_newest_steps(tmp_path: Path):
    for step in (5, 100, 20, 7):
        save_checkpoint(state(0.0, step), tmp_path / f"step_{step}.pt")
    save_checkpoint(state(0.0, 7), tmp_path / "best.pt")
    prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step_20.pt", "step_100.pt"]
    assert (tmp_path / "best.pt").is_file()
    assert load_checkpoint(tmp_path)["step"] == 7  # a run directory loads its best


def test_average(tmp_path: Path):
    paths = []
    for step, value in ((1, 1.0), (2, 2.0), (3, 6.0)):
        paths.append(tmp_path / f"step_{step}.pt")
        save_checkpoint({**state(value, step), "optimizer": {"lr": 1}}, paths[-1])
    averaged = average_checkpoints(paths)
    assert averaged["model"]["w"].tolist() == [3.0] * 3
    assert averaged["model"]["n"].item() == 3 and "optimizer" not in averaged
    result = subprocess.run(
        [sys.executable, "scripts/average_checkpoints.py", str(tmp_path), "--last", "2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "averaged.pt")["model"]["w"].tolist() == [4.0] * 3


def test_bad_checkpoints_are_one_line_errors(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable nmt checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not an nmt checkpoint of format"):
        load_checkpoint(tmp_path / "foreign.pt")
