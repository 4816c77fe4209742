"""The trainer: exact resume, TensorBoard content, interruption, faults, and DDP under torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nmt import train as train_module
from nmt.checkpoint import load_checkpoint, step_checkpoints
from nmt.config import Config, DecodeConfig, ModelConfig, TrainConfig
from nmt.errors import UserError
from nmt.train import train
from tests.toy import toy_data_config, write_toy_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["rnn", "transformer"]


def tiny_config(tmp_path: Path, arch: str, **train_settings) -> Config:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        write_toy_corpus(corpus)
    model = ModelConfig(
        arch=arch, embed_size=32, hidden_size=32, attention_size=32, ffn_size=64, num_heads=2,
        num_encoder_layers=2 if arch == "transformer" else 1,
        num_decoder_layers=2 if arch == "transformer" else 1, dropout=0.1,
    )  # fmt: skip
    settings = dict(
        device="cpu", precision="fp32", max_steps=8, max_epochs=None, max_tokens=2400,
        warmup_steps=4, lr=3e-3, validate_every=4, log_every=2, num_heatmaps=1, patience=None,
    )  # fmt: skip
    settings.update(train_settings)
    return Config(
        data=toy_data_config(corpus, tmp_path / "cache"),
        model=model,
        train=TrainConfig(**settings),
        decode=DecodeConfig(beam_size=1, max_len_a=1.2, max_len_b=4),
        name=f"toy_{arch}",
    )


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and tests may share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_gives_the_same_parameters(tmp_path: Path, arch: str):
    # 200 toy pairs in 2400-token batches make 5 batches an epoch: stopping after 4 steps
    # stops mid-epoch, and the resumed run crosses into the next epoch.
    straight = tiny_config(tmp_path, arch, max_steps=8)
    train(straight, tmp_path / "straight")
    halves = tmp_path / "halves"
    first_half = dataclasses.replace(straight.train, max_steps=4)
    first = train(dataclasses.replace(straight, train=first_half), halves)
    assert (first.step, first.epoch, first.position) == (4, 0, 4)
    resumed = train(straight, halves)
    assert (resumed.step, resumed.epoch) == (8, 1)
    a = load_checkpoint(tmp_path / "straight" / "step_8.pt")["model"]
    b = load_checkpoint(halves / "step_8.pt")["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert [p.name for p in step_checkpoints(halves)] == ["step_4.pt", "step_5.pt", "step_8.pt"]
    assert train(straight, halves).step == 8  # a finished run resumed does nothing more


@pytest.mark.parametrize("arch", ARCHS)
def test_event_file_holds_scalars_and_attention_images(tmp_path: Path, arch: str):
    cfg = tiny_config(tmp_path, arch, max_steps=4)
    train(cfg, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/target_tokens_per_s"} <= scalars
    assert {"valid/loss", "valid/perplexity", "valid/bleu", "valid/chrf"} <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    images = set(events.Tags()["images"])
    layers = cfg.model.num_decoder_layers
    expected = {f"attention/0/layer_{layer}" for layer in range(layers)}
    if arch == "transformer":
        expected.add("attention/0/last_layer_heads")
    assert images == expected
    for tag in expected:
        image = events.Images(tag)[-1]
        assert image.width >= 200 and image.height >= 150
    assert events.Images(f"attention/0/layer_{layers - 1}")[-1].step == 4


def test_each_validation_is_recorded_against_wall_time(tmp_path: Path):
    cfg = tiny_config(tmp_path, "transformer", max_steps=8, validate_every=3)
    progress = train(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / train_module.HISTORY_NAME).read_text().splitlines()
    history = [json.loads(line) for line in lines]
    # every 3 steps, at the end of the first epoch (5 batches) and at the last step
    assert [record["step"] for record in history] == [3, 5, 6, 8]
    seconds = [record["train_seconds"] for record in history]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert all(r["since_launch_seconds"] > r["train_seconds"] for r in history)
    assert all(r["validation_seconds"] > 0 for r in history)
    best = max(history, key=lambda record: record["bleu"])
    assert best["step"] == progress.best_step and best["bleu"] == round(progress.best_bleu, 2)
    assert history[0]["best"]  # the first validation is always the best so far


def test_time_to_quality_finds_the_first_checkpoint_at_the_fraction(tmp_path: Path):
    history = [
        {"step": 100, "bleu": 20.0, "since_launch_seconds": 60.0},
        {"step": 200, "bleu": 31.0, "since_launch_seconds": 120.0},
        {"step": 300, "bleu": 30.0, "since_launch_seconds": 180.0},
        {"step": 400, "bleu": 33.0, "since_launch_seconds": 240.0},
    ]
    (tmp_path / train_module.HISTORY_NAME).write_text(
        "".join(json.dumps(record) + "\n" for record in history)
    )
    script = REPO_ROOT / "scripts" / "time_to_quality.py"
    output = tmp_path / "ttq.json"
    done = subprocess.run([sys.executable, str(script), str(tmp_path), "--output", str(output)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (found,) = json.loads(output.read_text())  # 90% of 33.0 = 29.7: step 200 first
    assert (found["reached_step"], found["reached_seconds"]) == (200, 120.0)
    assert (found["final_bleu"], found["final_step"], found["final_seconds"]) == (33.0, 400, 240.0)
    assert "33.00" in done.stdout and "detokenized and cased" in done.stdout


def test_linear_schedule_decays_to_zero_at_the_step_budget(tmp_path: Path):
    cfg = tiny_config(tmp_path, "rnn", schedule="linear", max_steps=10, warmup_steps=2)
    progress = train_module.Progress()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = train_module.make_scheduler(
        optimizer, cfg.train, lambda step: train_module._budget_used(cfg.train, progress, step, 10)
    )
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.5, 0.9, 0.8])  # warm-up, capped by 1 - step/10
    assert rates[-1] == pytest.approx(0.1) and optimizer.param_groups[0]["lr"] == 0.0
    # under a time budget the rate follows the clock, validation time included
    timed = dataclasses.replace(cfg.train, max_steps=None, max_time=1.0)
    progress.elapsed, progress.validation_seconds = 40.0, 5.0
    assert train_module._budget_used(timed, progress, 3, None) == pytest.approx(0.75)
    with pytest.raises(UserError, match=r"train\.schedule=linear decays to zero"):
        unbounded = dataclasses.replace(timed, max_time=None)
        train_module._budget_used(unbounded, progress, 3, None)


def test_time_budget_keeps_room_for_the_final_validation():
    budget = TrainConfig(max_time=1.0, max_steps=None)
    progress = train_module.Progress(elapsed=50.0)
    assert not train_module._over_limit(budget, progress)
    progress.validation_seconds = 12.0  # 50 s + the 12 s the last validation took > 60 s
    assert train_module._over_limit(budget, progress)


def test_interrupt_writes_a_checkpoint_then_resumes(tmp_path: Path, monkeypatch):
    cfg = tiny_config(tmp_path, "transformer", max_steps=6, validate_every=100)
    real_step = train_module.train_step
    calls = {"n": 0}

    def interrupt_third_step(run, group):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(run, group)

    monkeypatch.setattr(train_module, "train_step", interrupt_third_step)
    with pytest.raises(
        UserError, match=r"interrupted at step 2; saved .*step_2\.pt.*hydra\.run\.dir"
    ):
        train(cfg, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "step_2.pt")["progress"]["step"] == 2
    monkeypatch.setattr(train_module, "train_step", real_step)
    assert train(cfg, tmp_path / "run").step == 6


def test_non_finite_losses_are_skipped_then_stop(tmp_path: Path, monkeypatch):
    cfg = tiny_config(tmp_path, "rnn", max_nonfinite=3)
    real_cross_entropy = torch.nn.functional.cross_entropy
    monkeypatch.setattr(
        train_module.F, "cross_entropy", lambda *a, **k: real_cross_entropy(*a, **k) * float("nan")
    )
    with pytest.raises(UserError, match=r"not finite for 3 steps in a row: lower train\.lr"):
        train(cfg, tmp_path / "run")


def test_bf16_autocast_path_trains(tmp_path: Path):
    """The mixed-precision path (bf16 autocast; on CPU here, on CUDA by default)."""
    progress = train(tiny_config(tmp_path, "transformer", precision="bf16", max_steps=3),
                     tmp_path / "run")  # fmt: skip
    assert progress.step == 3
    state = load_checkpoint(tmp_path / "run" / "step_3.pt")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def test_settings_are_checked(tmp_path: Path):
    with pytest.raises(UserError, match=r"train\.precision=fp16 needs a CUDA device"):
        train(tiny_config(tmp_path, "rnn", precision="fp16"), tmp_path / "run")
    with pytest.raises(UserError, match=r"no batch fits train\.max_tokens=8"):
        train(tiny_config(tmp_path, "rnn", max_tokens=8), tmp_path / "run")


def test_two_process_gloo_run_under_torchrun(tmp_path: Path):
    corpus = write_toy_corpus(tmp_path / "corpus")
    run_dir = tmp_path / "run"
    overrides = [
        "data=local_files", f"data.root={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.spm.vocab_size=300", "model=rnn_bahdanau", "model.embed_size=32",
        "model.hidden_size=32", "model.attention_size=32", "train.device=cpu",
        "train.max_steps=4", "train.max_tokens=2400", "train.validate_every=2",
        "train.max_time=10", "train.schedule=linear",  # rank 0's clock drives both ranks
        "train.num_heatmaps=1", "decode.beam_size=1", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "nmt",
         "train", *overrides],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(run_dir / "best.pt")
    assert state["progress"]["step"] in (2, 4) and state["config"]["model"]["arch"] == "rnn"
    assert (run_dir / "step_4.pt").is_file() and (run_dir / "config.yaml").is_file()
    assert "done: best BLEU" in result.stderr
