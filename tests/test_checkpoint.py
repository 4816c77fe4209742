"""Checkpoints are atomic, pruned to the last K, averaged correctly, and fail clearly."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import (
    NonFiniteParameters,
    average_checkpoints,
    checkpoint_file,
    latest_checkpoint,
    link_best,
    load_checkpoint,
    prune_checkpoints,
    repair_best,
    save_checkpoint,
    step_checkpoints,
)
from nmt.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def state(value: float, step: int, best_step: int = 0) -> dict:
    return {
        "model": {"w": torch.full((3,), value), "n": torch.tensor(step)},
        "step": step,
        "progress": {"step": step, "best_step": best_step},
    }


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
    assert load_checkpoint(tmp_path / "average_last2.pt")["model"]["w"].tolist() == [4.0] * 3
    assert not (tmp_path / "averaged.pt").exists()  # the name of a validated average only


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
    # a damaged step file in a run directory: read for its progress before any model
    run_dir = tmp_path / "run"
    save_checkpoint(state(1.0, 5, best_step=5), run_dir / "step_5.pt")
    whole = (run_dir / "step_5.pt").read_bytes()
    (run_dir / "step_5.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"step_5\.pt is not a readable nmt checkpoint"):
        checkpoint_file(run_dir)


def test_parameters_that_are_not_finite_are_never_written(tmp_path: Path):
    save_checkpoint(state(1.0, 1), tmp_path / "step_1.pt")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteParameters, match="w"):
            save_checkpoint(state(bad, 2), tmp_path / "step_1.pt")
    assert load_checkpoint(tmp_path / "step_1.pt")["model"]["w"].tolist() == [1.0] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["step_1.pt"]


def test_a_full_disk_is_one_line_naming_the_file_and_what_is_intact(tmp_path: Path, monkeypatch):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system to fill the disk with")
    save_checkpoint(state(1.0, 1), tmp_path / "step_1.pt")
    real_save = torch.save

    def save_to_a_full_disk(obj, file):  # torch's own writer meets ENOSPC
        with open("/dev/full", "wb") as full:
            real_save(obj, full)

    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    with pytest.raises(UserError) as error:
        save_checkpoint(state(2.0, 2), tmp_path / "step_2.pt")
    assert str(error.value).startswith(f"no space left on device while writing {tmp_path}/step_2")
    assert f"the previous checkpoint {tmp_path / 'step_1.pt'} is intact" in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["step_1.pt"]  # no temporary left


def test_best_copied_where_there_are_no_hard_links_and_a_full_disk_is_one_line(
    tmp_path: Path, monkeypatch
):
    save_checkpoint(state(1.0, 1, best_step=1), tmp_path / "step_1.pt")

    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    link_best(tmp_path / "step_1.pt")  # a copy instead
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 1

    def full(source, target):
        Path(target).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(UserError, match=r"cannot write .*best\.pt \(no space left on device\)"):
        link_best(tmp_path / "step_1.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "step_1.pt"]


def test_best_is_a_link_to_the_best_step_and_a_stale_one_is_found_and_repaired(tmp_path: Path):
    for step in (1, 2):
        save_checkpoint(state(float(step), step, best_step=step), tmp_path / f"step_{step}.pt")
    link_best(tmp_path / "step_1.pt")
    assert (tmp_path / "best.pt").samefile(tmp_path / "step_1.pt")
    # a crash after step_2.pt (best so far) but before best.pt was linked to it:
    assert checkpoint_file(tmp_path) == tmp_path / "step_2.pt"
    assert load_checkpoint(tmp_path)["step"] == 2
    repair_best(tmp_path, best_step=2)
    assert (tmp_path / "best.pt").samefile(tmp_path / "step_2.pt")
    assert checkpoint_file(tmp_path) == tmp_path / "best.pt"
    prune_checkpoints(tmp_path, keep_last=1)
    (tmp_path / "step_2.pt").unlink()  # best.pt keeps its own link to the data
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2


def test_a_run_directory_that_vanished_is_one_line(tmp_path: Path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real_open = open

    def remove_the_folder_first(path, *args, **kwargs):  # another process deleted it
        run_dir.rmdir()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", remove_the_folder_first)
    with pytest.raises(UserError, match=r"cannot write .*step_1\.pt \(No such file or directory\)"
                                        r": its folder is gone"):  # fmt: skip
        save_checkpoint(state(1.0, 1), run_dir / "step_1.pt")
