"""Fault injection on real `nmt train` processes: SIGKILL and Ctrl-C at the worst moments.

Each architecture trains a toy corpus once without interruption and once through a chain of
faults, each resumed with the same command: SIGKILL mid-step, Ctrl-C mid-validation, SIGKILL in
the middle of a checkpoint write, then Ctrl-C mid-step followed by a second Ctrl-C while the
checkpoint it triggered is being written. The chain must end bit-identical to the uninterrupted
run: parameters, optimiser state, the logged training losses and the validation history. The
processes pause at named points (`nmt.faults`) so that each signal lands exactly there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nmt.checkpoint import load_checkpoint, step_checkpoints
from nmt.run_dir import HISTORY_NAME
from tests.toy import write_toy_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "rnn": ["model=rnn_bahdanau", "model.embed_size=32", "model.hidden_size=32",
            "model.attention_size=32"],
    "transformer": ["model=transformer_small", "model.hidden_size=32", "model.ffn_size=64",
                    "model.num_heads=2", "model.num_encoder_layers=2",
                    "model.num_decoder_layers=2"],
}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("faults") / "corpus")


def start(arch: str, corpus: Path, run_dir: Path, pause: str = "") -> subprocess.Popen:
    """`nmt train` of 12 steps (5 batches an epoch; validations at 4, 5, 8, 10, 12), pausing at
    the `nmt.faults` points in `pause` (e.g. "step:3")."""
    overrides = [
        "data=local_files", f"data.root={corpus}", f"data.cache_dir={corpus.parent / 'cache'}",
        "data.spm.vocab_size=300", *MODELS[arch], "model.dropout=0.1", "train.device=cpu",
        "train.precision=fp32", "train.max_steps=12", "train.max_epochs=null",
        "train.max_tokens=2400", "train.warmup_steps=4", "train.lr=3e-3",
        "train.validate_every=4", "train.log_every=2", "train.keep_last=2", "train.average_last=0",
        "train.num_heatmaps=1", "decode.beam_size=1", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NMT_PAUSE_AT": pause,
           "NMT_PAUSE_MARKER": str(run_dir.parent / f"{run_dir.name}.paused")}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "nmt", "train", *overrides], cwd=REPO_ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def signal_when_paused(process: subprocess.Popen, run_dir: Path, point: str, number: int) -> None:
    """Wait until `process` pauses at `point`, then send it `number`."""
    marker = run_dir.parent / f"{run_dir.name}.paused.{point}"
    deadline = time.monotonic() + 240
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) before {point}:\n{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"never paused at {point}")
        time.sleep(0.05)
    os.kill(process.pid, number)
    marker.unlink()  # after the signal: the process goes on once it is gone


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """The logged training loss curve (TensorBoard drops what a killed process logged after
    its last checkpoint: every step once)."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("train/loss")]


def history(run_dir: Path) -> list[dict]:
    keys = ("step", "epoch", "loss", "bleu", "chrf", "best")
    lines = (run_dir / HISTORY_NAME).read_text().splitlines()
    return [{key: json.loads(line)[key] for key in keys} for line in lines]


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_a_chain_of_kills_and_interrupts_resumes_bit_exactly(tmp_path: Path, corpus, arch):
    straight = start(arch, corpus, tmp_path / "straight")  # alongside: two cores
    run_dir = tmp_path / "faulted"

    killed_mid_step = start(arch, corpus, run_dir, "step:3")
    signal_when_paused(killed_mid_step, run_dir, "step", signal.SIGKILL)
    assert finish(killed_mid_step)[0] == -signal.SIGKILL

    interrupted_validation = start(arch, corpus, run_dir, "validation:1")  # at step 4
    signal_when_paused(interrupted_validation, run_dir, "validation", signal.SIGINT)
    code, stderr = finish(interrupted_validation)
    assert code == 130 and "interrupted at step 4, checkpoint saved" in stderr, stderr
    assert "Traceback" not in stderr
    assert load_checkpoint(run_dir / "step_4.pt")["progress"]["validation_pending"]

    # redoes the validation of step 4 (write 1), killed writing step 5's checkpoint (write 2)
    killed_mid_write = start(arch, corpus, run_dir, "checkpoint-write:2")
    signal_when_paused(killed_mid_write, run_dir, "checkpoint-write", signal.SIGKILL)
    assert finish(killed_mid_write)[0] == -signal.SIGKILL
    assert list(run_dir.glob(".step_5.pt.tmp-*")), "a partial checkpoint file is left"
    assert [p.name for p in step_checkpoints(run_dir)] == ["step_4.pt"]

    # Ctrl-C in step 6, then again while the checkpoint of step 6 is written
    twice = start(arch, corpus, run_dir, "step:2,checkpoint-write:2")
    signal_when_paused(twice, run_dir, "step", signal.SIGINT)
    signal_when_paused(twice, run_dir, "checkpoint-write", signal.SIGINT)
    code, stderr = finish(twice)
    assert code == 130 and "interrupted at step 6, checkpoint saved" in stderr, stderr
    assert not list(run_dir.glob(".*.tmp-*")), "the partial file was removed at start"

    code, stderr = finish(start(arch, corpus, run_dir))
    assert code == 0, stderr
    assert finish(straight)[0] == 0
    assert [p.name for p in step_checkpoints(run_dir)] == ["step_10.pt", "step_12.pt"]
    a, b = (load_checkpoint(path / "step_12.pt") for path in (tmp_path / "straight", run_dir))
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert losses(run_dir) == losses(tmp_path / "straight")
    assert [step for step, _ in losses(run_dir)] == [2, 4, 6, 8, 10, 12]
    assert history(run_dir) == history(tmp_path / "straight")
    assert [record["step"] for record in history(run_dir)] == [4, 5, 8, 10, 12]
    best_step = b["progress"]["best_step"]
    assert load_checkpoint(run_dir / "best.pt")["progress"]["step"] == best_step
