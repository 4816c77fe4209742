"""The run directory: one training at a time, leftovers of a crash, history, resume policy."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.config import Config, ModelConfig, TrainConfig
from nmt.errors import UserError
from nmt.progress import Progress
from nmt.run_dir import HISTORY_NAME, LOCK_NAME, RunDir, resume_changes


def test_a_second_training_is_refused_while_the_first_holds_the_directory(tmp_path: Path):
    with RunDir(tmp_path).lock():
        holder = (tmp_path / LOCK_NAME).read_text()
        assert f"process {os.getpid()}" in holder
        # another process (flock locks belong to open files, so a child is another holder)
        code = (
            "import sys; from pathlib import Path; from nmt.run_dir import RunDir\n"
            "from nmt.errors import UserError\n"
            "try:\n    RunDir(Path(sys.argv[1])).lock().__enter__()\n"
            "except UserError as e:\n    print(e); sys.exit(3)\n"
        )
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 3, done.stderr
        assert f"is in use by nmt train, process {os.getpid()}" in done.stdout
        assert "train in another hydra.run.dir" in done.stdout
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released and cleared


def test_the_lock_of_a_killed_training_is_taken_over(tmp_path: Path, caplog):
    (tmp_path / LOCK_NAME).write_text("nmt train, process 999999 on elsewhere (started ...)")
    with caplog.at_level("INFO"), RunDir(tmp_path).lock():
        assert f"process {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
    assert "took over" in caplog.text and "process 999999" in caplog.text


def test_an_unwritable_run_directory_fails_at_once(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory")
    run_dir = RunDir(tmp_path / "file" / "run")
    with pytest.raises(UserError, match=r"cannot write to the run directory .*file/run"):
        run_dir.lock().__enter__()


def test_tidy_removes_partial_writes_and_validations_the_resumed_run_redoes(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    (tmp_path / ".step_12.pt.tmp-4242").write_bytes(b"half a checkpoint")
    (tmp_path / ".best.pt.tmp-4242").write_bytes(b"")
    records = [{"step": step, "bleu": float(step)} for step in (4, 8, 12)]
    lines = [json.dumps(record) + "\n" for record in records]
    (tmp_path / HISTORY_NAME).write_text("".join(lines) + '{"step": 16, "bl')  # cut by a crash
    run_dir.tidy(Progress(step=9, last_validated=8), Config(train=TrainConfig(lr=1e-3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", HISTORY_NAME]
    assert (tmp_path / HISTORY_NAME).read_text() == "".join(lines[:2])
    assert "lr: 0.001" in (tmp_path / "config.yaml").read_text()


def test_settings_that_fix_the_model_or_data_cannot_change_on_resume(tmp_path: Path):
    saved = Config()
    changed_model = dataclasses.replace(saved, model=ModelConfig(hidden_size=512))
    with pytest.raises(UserError) as error:
        resume_changes(saved, changed_model, tmp_path)
    message = str(error.value)
    assert "model.hidden_size (128 -> 512)" in message and "another hydra.run.dir" in message
    assert "\n" not in message
    for key, value in (("seed", 7), ("max_tokens", 100), ("accumulate", 2)):
        new = dataclasses.replace(saved, train=dataclasses.replace(saved.train, **{key: value}))
        with pytest.raises(UserError, match=f"train.{key}"):
            resume_changes(saved, new, tmp_path)


def test_settings_that_may_change_on_resume_are_listed(tmp_path: Path):
    saved = Config()
    saved.data.root = "/corpus"
    train = dataclasses.replace(saved.train, lr=1e-4, max_steps=500, patience=3)
    data = dataclasses.replace(saved.data, root="/moved/corpus")
    translate = dataclasses.replace(saved.translate, ckpt="x.pt")  # not a training setting
    new = dataclasses.replace(saved, data=data, train=train, translate=translate, name="b")
    assert resume_changes(saved, new, tmp_path) == [
        "changed data.root: '/corpus' -> '/moved/corpus'",
        "changed train.max_steps: None -> 500",
        "changed train.lr: 0.005 -> 0.0001",
        "changed train.patience: None -> 3",
    ]
