"""The trainer: exact resume, TensorBoard content, interruption, faults, and DDP under torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nmt import checkpoint as checkpoint_module
from nmt import evaluate as evaluate_module
from nmt import faults, progress
from nmt import run_dir as run_dir_module
from nmt import tracking as tracking_module
from nmt import train as train_module
from nmt.checkpoint import load_checkpoint, step_checkpoints
from nmt.config import (
    Config,
    DecodeConfig,
    EvaluateConfig,
    ModelConfig,
    TrainConfig,
    TranslateConfig,
)
from nmt.errors import Interrupted, UserError
from nmt.models import build_model
from nmt.optim import Schedule, linear_peak
from nmt.run_dir import HISTORY_NAME
from nmt.train import train
from nmt.translate import evaluate_checkpoint
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
        schedule="inverse_sqrt", average_last=0,  # a step's rate does not depend on max_steps
    )  # fmt: skip
    settings.update(train_settings)
    return Config(
        data=toy_data_config(corpus, tmp_path / "cache"),
        model=model,
        train=TrainConfig(**settings),
        decode=DecodeConfig(beam_size=1, max_len_a=1.2, max_len_b=4),
        name=f"toy_{arch}",
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_gives_the_same_parameters(tmp_path: Path, arch: str):
    # 200 toy pairs in 2400-token batches make 5 batches an epoch: stopping after 4 steps
    # stops mid-epoch, and the resumed run crosses into the next epoch.
    straight = tiny_config(tmp_path, arch, max_steps=8)
    train(straight, tmp_path / "straight")
    halves = tmp_path / "halves"
    first_half = dataclasses.replace(straight.train, max_steps=4)
    first = train(dataclasses.replace(straight, train=first_half), halves)
    assert (first.step, first.epoch, first.epoch_batches_done) == (4, 0, 4)
    resumed = train(straight, halves)
    assert (resumed.step, resumed.epoch) == (8, 1)
    a = load_checkpoint(tmp_path / "straight" / "step_8.pt")["model"]
    b = load_checkpoint(halves / "step_8.pt")["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert [p.name for p in step_checkpoints(halves)] == ["step_4.pt", "step_5.pt", "step_8.pt"]
    assert train(straight, halves).step == 8  # a finished run resumed does nothing more


@pytest.mark.parametrize("arch", ARCHS)
def test_event_file_holds_scalars_and_attention_images(tmp_path: Path, arch: str, monkeypatch):
    cfg = tiny_config(tmp_path, arch, max_steps=4)
    searched, drawn = [], []  # the first sentence's subwords as validation found and drew them
    real_search, real_maps = evaluate_module.search_in_order, tracking_module.attention_maps

    def search_spy(*args, **kwargs):
        found = real_search(*args, **kwargs)
        searched.append(found[0][0].tokens)
        return found

    def maps_spy(model, src_ids, tgt_ids, device):
        drawn.append(list(tgt_ids))
        return real_maps(model, src_ids, tgt_ids, device)

    monkeypatch.setattr(evaluate_module, "search_in_order", search_spy)
    monkeypatch.setattr(tracking_module, "attention_maps", maps_spy)
    train(cfg, tmp_path / "run")
    assert drawn == searched  # the heatmaps show the search's own subwords, not a re-encoding
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
    lines = (tmp_path / "run" / HISTORY_NAME).read_text().splitlines()
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
    (tmp_path / HISTORY_NAME).write_text("".join(json.dumps(record) + "\n" for record in history))
    script = REPO_ROOT / "scripts" / "time_to_quality.py"
    output = tmp_path / "ttq.json"
    done = subprocess.run([sys.executable, str(script), str(tmp_path), "--output", str(output)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (found,) = json.loads(output.read_text())  # 90% of 33.0 = 29.7: step 200 first
    assert (found["reached_step"], found["reached_seconds"]) == (200, 120.0)
    assert (found["final_bleu"], found["final_step"], found["final_seconds"]) == (33.0, 400, 240.0)
    assert "33.00" in done.stdout and "detokenized and cased" in done.stdout


def test_results_table_reports_the_kept_model_and_the_seed_spread(tmp_path: Path):
    run_dirs = []
    for seed in (1, 2):
        cfg = tiny_config(tmp_path, "transformer", seed=seed, max_steps=4, validate_every=2,
                          keep_last=2, average_last=2)  # fmt: skip
        train(cfg, tmp_path / f"seed{seed}")
        evaluate_checkpoint(TranslateConfig(ckpt=str(tmp_path / f"seed{seed}")), EvaluateConfig())
        run_dirs.append(tmp_path / f"seed{seed}")
    script = REPO_ROOT / "scripts" / "results_table.py"
    output = tmp_path / "rows.json"
    command = [sys.executable, str(script), *map(str, run_dirs), "--json", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(output.read_text())
    for row, run_dir in zip(rows, run_dirs, strict=True):
        kept = checkpoint_module.checkpoint_file(run_dir)
        test = json.loads((run_dir / f"eval_{kept.stem}.json").read_text())["results"][1]
        vocab = load_checkpoint(kept)["model"]["output.weight"].shape[0]
        model = build_model(cfg.model, vocab, vocab)  # tied embeddings count once
        assert row["kept"] == kept.name and row["bleu"] == test["bleu"] and row["steps"] == 4
        assert row["parameters"] == sum(p.numel() for p in model.parameters())
    done = subprocess.run([*command, "--seeds"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (merged,) = json.loads(output.read_text())
    bleus = [row["bleu"] for row in rows]
    assert merged["bleu"] == pytest.approx(sum(bleus) / 2)
    assert merged["bleu_std"] == pytest.approx(abs(bleus[0] - bleus[1]) / 2**0.5)
    assert f"{merged['bleu']:.2f} ± {merged['bleu_std']:.2f}" in done.stdout


def test_linear_schedule_decays_to_zero_at_the_step_budget(tmp_path: Path):
    cfg = tiny_config(tmp_path, "rnn", schedule="linear", max_steps=10, warmup_steps=2, lr=1.0)
    state = progress.Progress()
    schedule = Schedule(cfg.train, lambda step: progress.budget_used(cfg.train, state, step, 10))
    rates = [schedule.lr(step) for step in range(11)]
    assert rates[:3] == pytest.approx([0.5, 0.9, 0.8])  # warm-up, capped by 1 - step/10
    assert rates[9] == pytest.approx(0.1) and rates[10] == 0.0
    # under a time budget the rate follows the clock, validation time included
    timed = dataclasses.replace(cfg.train, max_steps=None, max_time=1.0)
    state.elapsed, state.validation_seconds = 40.0, 5.0
    assert progress.budget_used(timed, state, 3, None) == pytest.approx(0.75)
    with pytest.raises(UserError, match=r"train\.schedule=linear decays to zero"):
        unbounded = dataclasses.replace(timed, max_time=None)
        progress.budget_used(unbounded, state, 3, None)


def test_linear_schedule_peaks_below_lr_where_the_warm_up_meets_the_decay(tmp_path: Path):
    cfg = tiny_config(tmp_path, "rnn", schedule="linear", warmup_steps=2000, lr=5e-3)
    schedule = Schedule(cfg.train, lambda step: step / 6960)  # 30 epochs of Multi30k de->en
    rates = [schedule.lr(step) for step in range(6960)]
    step, rate = linear_peak(cfg.train, 6960)
    assert rate == max(rates) and step == rates.index(rate) == 1553
    assert rate == pytest.approx(5e-3 * 6961 / 8960, rel=1e-3)  # 78% of train.lr
    assert linear_peak(dataclasses.replace(cfg.train, warmup_steps=0), 6960) == (0, 5e-3)


def test_plateau_schedule_halves_after_three_validations_without_progress(tmp_path: Path):
    cfg = tiny_config(tmp_path, "rnn", schedule="plateau", lr=1.0)
    schedule = Schedule(cfg.train, lambda step: 0.0)
    for bleu in (10.0, 12.0, 12.0, 11.0):
        schedule.validated(bleu)
    assert schedule.lr(100) == 1.0
    schedule.validated(11.5)  # the third validation in a row below 12.0
    assert schedule.lr(100) == 0.5
    restored = Schedule(cfg.train, lambda step: 0.0)
    restored.load_state_dict(schedule.state_dict())
    assert restored.lr(0) == 0.5 and restored.state_dict() == schedule.state_dict()


def test_time_budget_keeps_room_for_the_final_validation():
    budget = TrainConfig(max_time=1.0, max_steps=None)
    state = progress.Progress(elapsed=50.0)
    assert not progress.over_limit(budget, state)
    state.validation_seconds = 12.0  # 50 s + the 12 s the last validation took > 60 s
    assert progress.over_limit(budget, state)


def test_bf16_autocast_path_trains(tmp_path: Path):
    """The mixed-precision path (bf16 autocast; on CPU here, on CUDA by default)."""
    progress = train(tiny_config(tmp_path, "transformer", precision="bf16", max_steps=3),
                     tmp_path / "run")  # fmt: skip
    assert progress.step == 3
    state = load_checkpoint(tmp_path / "run" / "step_3.pt")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def test_a_run_on_a_cpu_with_amx_names_bf16_once(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    with caplog.at_level("INFO"):
        train(tiny_config(tmp_path, "rnn", precision="auto", max_steps=2), tmp_path / "run")
    assert caplog.text.count("train.precision=bf16 may train faster") == 1
    assert "precision torch.float32" in caplog.text  # auto itself stays fp32 on a CPU


def test_settings_are_checked(tmp_path: Path):
    with pytest.raises(UserError, match=r"train\.precision=fp16 needs a CUDA device"):
        train(tiny_config(tmp_path, "rnn", precision="fp16"), tmp_path / "run")
    with pytest.raises(UserError, match=r"no batch fits train\.max_tokens=8"):
        train(tiny_config(tmp_path, "rnn", max_tokens=8), tmp_path / "run")


def torchrun_train(
    tmp_path: Path,
    run_dir: Path,
    *overrides: str,
    probe: dict[str, str] | None = None,
    nproc: int = 2,
    timeout: float = 180,
) -> subprocess.CompletedProcess:
    """`nmt train` under torchrun with `nproc` gloo processes: a tiny RNN on the toy corpus;
    `probe` plants the faults of tests/ddp_probe.py (its environment variables)."""
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        write_toy_corpus(corpus)
    settings = [
        "data=local_files", f"data.root={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.spm.vocab_size=300", "model=rnn_bahdanau", "model.embed_size=32",
        "model.hidden_size=32", "model.attention_size=32", "train.device=cpu",
        "train.max_tokens=2400", "train.validate_every=2", "train.num_heatmaps=1",
        "decode.beam_size=1", f"hydra.run.dir={run_dir}", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(probe or {})}
    entry = ["tests/ddp_probe.py"] if probe else ["-m", "nmt"]
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={nproc}", *entry, "train", *settings],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # torchrun passes SIGTERM on to its workers, and kills those that stay (stuck in a
        # collective) 30 seconds later.
        process.terminate()
        stdout, stderr = process.communicate(timeout=120)
        pytest.fail(f"the ranks hung: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_two_process_gloo_run_under_torchrun(tmp_path: Path):
    run_dir = tmp_path / "run"
    # With a time budget, rank 0's clock drives both ranks.
    budget = ["train.max_steps=4", "train.max_time=10", "train.schedule=linear"]
    result = torchrun_train(tmp_path, run_dir, *budget)
    state = load_checkpoint(run_dir / "best.pt")
    assert state["progress"]["step"] in (2, 4) and state["config"]["model"]["arch"] == "rnn"
    assert (run_dir / "step_4.pt").is_file() and (run_dir / "config.yaml").is_file()
    assert result.stderr.count("done: best BLEU") == 1  # rank 0 alone reports


def test_a_resumed_two_process_run_is_exact_on_every_rank(tmp_path: Path):
    """Each rank draws its own dropout masks, so each must resume its own random state: rank 1
    restarted from rank 0's would send different gradients into the all-reduce."""
    settings = ["train.schedule=inverse_sqrt", "train.average_last=0", "model.dropout=0.5"]
    torchrun_train(tmp_path, tmp_path / "straight", "train.max_steps=4", *settings)
    torchrun_train(tmp_path, tmp_path / "resumed", "train.max_steps=2", *settings)
    torchrun_train(tmp_path, tmp_path / "resumed", "train.max_steps=4", *settings)
    straight = load_checkpoint(tmp_path / "straight" / "step_4.pt")["model"]
    resumed = load_checkpoint(tmp_path / "resumed" / "step_4.pt")["model"]
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_two_processes_train_like_one_accumulating_their_two_batches(tmp_path: Path):
    """Rank r takes batches r, r + 2, ...; one process with train.accumulate=2 takes the same
    pairs per step. The step's loss is the mean over all its target tokens either way, so the
    parameters agree (no dropout, whose masks differ), however unequal the pair's tokens."""
    settings = ["train.schedule=inverse_sqrt", "train.average_last=0", "train.max_steps=4",
                "model.dropout=0", "train.max_tokens=1200"]  # fmt: skip
    torchrun_train(tmp_path, tmp_path / "two", *settings)
    torchrun_train(tmp_path, tmp_path / "one", *settings, "train.accumulate=2", nproc=1)
    two = load_checkpoint(tmp_path / "two" / "step_4.pt")["model"]
    one = load_checkpoint(tmp_path / "one" / "step_4.pt")["model"]
    for name in two:
        torch.testing.assert_close(two[name], one[name], rtol=1e-6, atol=1e-8)


def test_a_run_resumed_on_more_processes_continues_its_epoch(tmp_path: Path):
    """One process stopped late in an epoch has done more batches than a shard of two holds:
    the two go on from the same place in the epoch's order instead of finding nothing left."""
    settings = ["train.schedule=inverse_sqrt", "train.average_last=0"]
    torchrun_train(tmp_path, tmp_path / "run", "train.max_steps=3", *settings, nproc=1)
    assert load_checkpoint(tmp_path / "run" / "step_3.pt")["progress"]["epoch_batches_done"] == 3
    torchrun_train(tmp_path, tmp_path / "run", "train.max_steps=5", *settings, timeout=60)
    progress = load_checkpoint(tmp_path / "run" / "step_5.pt")["progress"]
    # Batches 0-2 of epoch 0 done by one process are batch 0 of each shard of two (0, 2, ...
    # and 1, 3, ...) and a half: the two go on with their second batches (2 and 3), which
    # ends the epoch (4 batches, 2 per shard), then take epoch 1's first.
    assert (progress["world_size"], progress["epoch"], progress["epoch_batches_done"]) == (2, 1, 1)


def test_a_step_skipped_after_a_validation_keeps_the_ranks_together(tmp_path: Path):
    """Rank 1's loss is NaN on the step after the validation at step 2: every rank skips it,
    and no rank then validates step 2 again alone (waiting for ranks that went on)."""
    result = torchrun_train(tmp_path, tmp_path / "run", "train.max_steps=4",
                            probe={"NMT_PROBE_NAN": "1:2"})  # fmt: skip
    assert load_checkpoint(tmp_path / "run" / "step_4.pt")["progress"]["step"] == 4
    # Rank 0 alone logs, to the console and to train.log: the skip is reported once.
    assert result.stderr.count("non-finite loss at step 3") == 1
    assert (tmp_path / "run" / "train.log").read_text().count("non-finite loss at step 3") == 1


def test_every_rank_takes_the_same_rate_at_every_step(tmp_path: Path):
    """A linear schedule over a time budget reads the clock and the last validation's length,
    which rank 0 measures: the other ranks must step at rank 0's rate, also after validations."""
    budget = [
        "train.max_epochs=null",
        "train.max_time=0.25",
        "train.schedule=linear",
        "train.warmup_steps=1",
    ]  # the rate follows the clock from the first step
    torchrun_train(tmp_path, tmp_path / "run", *budget,
                   probe={"NMT_PROBE_LR_LOG": str(tmp_path / "lr")})  # fmt: skip
    rank0, rank1 = (Path(f"{tmp_path / 'lr'}.{rank}").read_text() for rank in (0, 1))
    assert len(rank0.splitlines()) > 4 and rank0 == rank1


def interrupt_at(monkeypatch, point: str, count: int) -> None:
    """Send this process SIGINT the `count`-th time training reaches pause point `point` (as a
    user's Ctrl-C would arrive there), through the trainer's real signal handler."""
    seen = {"n": 0}

    def pause_point(name: str) -> None:
        if name == point:
            seen["n"] += 1
            if seen["n"] == count:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(faults, "pause_point", pause_point)


def same_run(a: Path, b: Path, step: int) -> None:
    """Two run directories hold bit-identical state at `step`, and the same validations."""
    first, second = load_checkpoint(a / f"step_{step}.pt"), load_checkpoint(b / f"step_{step}.pt")
    for name in first["model"]:
        assert torch.equal(first["model"][name], second["model"][name]), name
    for index, state in first["optimizer"]["state"].items():
        for key in state:
            assert torch.equal(state[key], second["optimizer"]["state"][index][key]), key
    assert first["progress"]["best_step"] == second["progress"]["best_step"]
    keys = ("step", "epoch", "loss", "bleu", "chrf", "best")

    def history(run: Path):
        lines = (run / HISTORY_NAME).read_text().splitlines()
        return [{k: json.loads(line)[k] for k in keys} for line in lines]

    assert history(a) == history(b)


@pytest.mark.parametrize(("arch", "point", "count"), [
    ("rnn", "step", 3), ("transformer", "step", 6), ("transformer", "validation", 1),
])  # fmt: skip
def test_ctrl_c_saves_and_the_resumed_run_is_exact(tmp_path: Path, monkeypatch, arch, point, count):
    """Ctrl-C mid-step lets the step finish and saves it; Ctrl-C mid-validation abandons the
    validation, saves the step before it, and the resumed run redoes it."""
    cfg = tiny_config(tmp_path, arch, max_steps=8)
    train(cfg, tmp_path / "straight")
    interrupt_at(monkeypatch, point, count)
    run_dir = tmp_path / "interrupted"
    with pytest.raises(UserError, match=r"interrupted at step \d+, checkpoint saved: run the "
                                        r"same command with hydra\.run\.dir="):  # fmt: skip
        train(cfg, run_dir)
    stopped = load_checkpoint(run_dir)["progress"] if point == "step" else None
    monkeypatch.undo()
    latest = step_checkpoints(run_dir)[-1]
    pending = load_checkpoint(latest)["progress"]["validation_pending"]
    assert pending == (point == "validation")
    assert stopped is None or stopped["step"] <= count
    assert train(cfg, run_dir).step == 8
    same_run(tmp_path / "straight", run_dir, 8)


def test_a_model_that_is_no_longer_finite_is_never_saved(tmp_path: Path, monkeypatch):
    cfg = tiny_config(tmp_path, "rnn", max_steps=8)
    train(cfg, tmp_path / "straight")
    real_step = train_module.train_step

    def poison_after_step_5(run, group):
        stepped = real_step(run, group)
        if run.progress.step == 5:
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("nan"))
        return stepped

    monkeypatch.setattr(train_module, "train_step", poison_after_step_5)
    run_dir = tmp_path / "run"
    with pytest.raises(UserError) as error:
        train(cfg, run_dir)
    message = str(error.value)
    assert "no longer finite" in message and "lower train.lr (now 0.003)" in message
    assert "fp32" not in message and f"resume from {run_dir / 'step_4.pt'}" in message
    # the validation at step 5 (an epoch's end) found the poison: nothing after 4 was written
    assert [p.name for p in step_checkpoints(run_dir)] == ["step_4.pt"]
    best = load_checkpoint(run_dir / "best.pt")
    assert all(bool(torch.isfinite(v).all()) for v in best["model"].values())
    monkeypatch.undo()
    assert train(cfg, run_dir).step == 8  # resumes from the last finite checkpoint
    same_run(tmp_path / "straight", run_dir, 8)


def test_divergence_advice_fits_the_run():
    from nmt.optim import divergence_advice

    fp32 = divergence_advice(TrainConfig(lr=1.0, clip_norm=0.0), fp32=True, resume_from=None)
    assert "lower train.lr (now 1)" in fp32 and "train.clip_norm=1.0" in fp32
    assert "precision" not in fp32
    bf16 = TrainConfig(precision="bf16")
    assert "use train.precision=fp32 (now bf16)" in divergence_advice(
        bf16, fp32=False, resume_from=Path("run/step_3.pt")
    )


def test_non_finite_losses_are_skipped_then_stop(tmp_path: Path, monkeypatch):
    cfg = tiny_config(tmp_path, "rnn", max_nonfinite=3)
    real_loss = train_module.cross_entropy_sum
    monkeypatch.setattr(
        train_module, "cross_entropy_sum", lambda *a, **k: real_loss(*a, **k) * float("nan")
    )
    with pytest.raises(UserError, match=r"not finite 3 times in a row at step 1: lower train\.lr"):
        train(cfg, tmp_path / "run")
    assert not step_checkpoints(tmp_path / "run")
    # Stopped after 2 skipped steps and resumed, the run counts on from 2: one more stops it.
    losses = []

    def counted_nan(*args, **kwargs):
        losses.append(1)
        return real_loss(*args, **kwargs) * float("nan")

    monkeypatch.setattr(train_module, "cross_entropy_sum", counted_nan)
    interrupt_at(monkeypatch, "step", 2)
    with pytest.raises(UserError, match="interrupted at step 0"):
        train(cfg, tmp_path / "again")
    assert (
        load_checkpoint(step_checkpoints(tmp_path / "again")[-1])["progress"]["nonfinite_steps"]
        == 2
    )
    losses.clear()
    monkeypatch.setattr(faults, "pause_point", lambda name: None)
    with pytest.raises(UserError, match=r"not finite 3 times in a row"):
        train(cfg, tmp_path / "again")
    assert len(losses) == 1


def test_best_pt_left_stale_by_a_crash_is_repaired_on_resume(tmp_path: Path, monkeypatch):
    cfg = tiny_config(tmp_path, "rnn", max_steps=12, validate_every=2)
    run_dir = tmp_path / "run"
    real_link, linked = checkpoint_module.link_best, []

    def crash_at_the_second_new_best(path: Path):
        if linked:
            raise RuntimeError(f"killed between writing {path.name} and linking best.pt")
        linked.append(path)
        return real_link(path)

    monkeypatch.setattr(checkpoint_module, "link_best", crash_at_the_second_new_best)
    with pytest.raises(RuntimeError, match="killed between"):
        train(cfg, run_dir)
    latest = step_checkpoints(run_dir)[-1]
    best_step = load_checkpoint(latest)["progress"]["best_step"]
    assert latest.name == f"step_{best_step}.pt" and linked[0] != latest
    assert (run_dir / "best.pt").samefile(linked[0])  # stale
    assert load_checkpoint(run_dir)["progress"]["step"] == best_step  # what translate uses
    monkeypatch.undo()
    final = train(cfg, run_dir)
    assert (run_dir / "best.pt").samefile(run_dir / f"step_{final.best_step}.pt")


def test_resume_applies_a_new_learning_rate_and_refuses_a_new_model(tmp_path: Path, caplog):
    cfg = tiny_config(tmp_path, "rnn", max_steps=4)
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    bigger = dataclasses.replace(cfg.model, hidden_size=64)
    with pytest.raises(UserError, match=r"model\.hidden_size \(32 -> 64\)"):
        train(dataclasses.replace(cfg, model=bigger), run_dir)
    more = dataclasses.replace(cfg.train, lr=1e-3, max_steps=6)
    with caplog.at_level("INFO"):
        train(dataclasses.replace(cfg, train=more), run_dir)
    assert "changed train.lr: 0.003 -> 0.001" in caplog.text
    state = load_checkpoint(run_dir / "step_6.pt")
    assert state["config"]["train"]["lr"] == 1e-3  # what actually ran
    schedule = Schedule(more, lambda step: 0.0)
    assert state["optimizer"]["param_groups"][0]["lr"] == schedule.lr(5)  # step 6 used it
    # train.resume=false would start a second run among the first one's checkpoints: refused
    before = sorted(p.name for p in run_dir.iterdir())
    fresh = dataclasses.replace(more, resume=False)
    with pytest.raises(UserError, match=r"train\.resume=false, but .* holds checkpoints"):
        train(dataclasses.replace(cfg, train=fresh), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert train(dataclasses.replace(cfg, train=fresh), tmp_path / "new").step == 6


def test_a_run_ended_by_patience_stays_ended_when_started_again(tmp_path: Path, monkeypatch):
    cfg = tiny_config(tmp_path, "rnn", max_steps=40, validate_every=2, patience=2)
    real_validate = train_module.validate

    def flat(*args, **kwargs):  # BLEU never improves after the first validation
        return dataclasses.replace(real_validate(*args, **kwargs), bleu=10.0)

    monkeypatch.setattr(train_module, "validate", flat)
    run_dir = tmp_path / "run"
    assert train(cfg, run_dir).step == 5  # best at 2; 4 and 5 (the toy epoch's end) no better
    assert train(cfg, run_dir).step == 5  # the same command again: finished, nothing trained


def test_a_search_that_cannot_give_its_nbest_is_refused_before_any_work(tmp_path: Path):
    cfg = tiny_config(tmp_path, "rnn", max_steps=2)  # beam 1
    wide = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, nbest=2))
    with pytest.raises(UserError, match=r"set decode\.nbest between 1 and decode\.beam_size=1"):
        train(wide, tmp_path / "run")
    assert not (tmp_path / "run").exists() or not step_checkpoints(tmp_path / "run")


def test_a_run_directory_in_use_is_refused_before_any_work(tmp_path: Path):
    cfg = tiny_config(tmp_path, "rnn", max_steps=2)
    in_use = pytest.raises(UserError, match=rf"in use by nmt train, process {os.getpid()}")
    with run_dir_module.RunDir(tmp_path / "run").lock(), in_use:
        train(cfg, tmp_path / "run")
    assert not step_checkpoints(tmp_path / "run")


def test_tiny_validation_sets_and_more_heatmaps_than_sentences(tmp_path: Path):
    for sentences in (1, 2):
        cfg = tiny_config(tmp_path, "transformer", max_steps=2, validate_every=2,
                          max_valid_sentences=sentences, num_heatmaps=3)  # fmt: skip
        assert train(cfg, tmp_path / f"run{sentences}").last_validated == 2


def test_keep_last_holds_exactly_also_when_interrupted(tmp_path: Path, monkeypatch):
    cfg = tiny_config(tmp_path, "rnn", max_steps=8, validate_every=1, keep_last=2)
    interrupt_at(monkeypatch, "step", 7)
    with pytest.raises(UserError, match="interrupted at step 7"):
        train(cfg, tmp_path / "run")
    assert [p.name for p in step_checkpoints(tmp_path / "run")] == ["step_6.pt", "step_7.pt"]


@pytest.mark.parametrize(("average_bleu", "model_file"), [(40.0, "averaged.pt"), (5.0, "best.pt")])
def test_average_of_the_last_checkpoints_is_the_model_only_if_it_validates_better(
    tmp_path: Path, monkeypatch, average_bleu: float, model_file: str
):
    cfg = tiny_config(tmp_path, "rnn", max_steps=8, validate_every=2, keep_last=3, average_last=3)
    # Validations at steps 2, 4, 5 (the toy epoch's end), 6 and 8, then the average's.
    real_validate, bleus = train_module.validate, iter([10, 30, 20, 25, 22, average_bleu])

    def scripted(*args, **kwargs):
        return dataclasses.replace(real_validate(*args, **kwargs), bleu=next(bleus))

    monkeypatch.setattr(train_module, "validate", scripted)
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    record = json.loads((run_dir / "average.json").read_text())
    assert record["steps"] == [5, 6, 8] and record["best_step"] == 4
    assert record["bleu"] == average_bleu and record["chosen"] == model_file
    assert checkpoint_module.checkpoint_file(run_dir) == run_dir / model_file
    assert (run_dir / "averaged.pt").exists() == (model_file == "averaged.pt")
    if model_file == "averaged.pt":
        members = [load_checkpoint(run_dir / f"step_{s}.pt")["model"] for s in (5, 6, 8)]
        for name, value in load_checkpoint(run_dir)["model"].items():
            mean = sum(member[name].double() for member in members) / 3
            torch.testing.assert_close(value, mean.to(value.dtype), msg=name)
    # The same command again finds the run finished and its average made: nothing is redone.
    monkeypatch.setattr(train_module, "validate", None)
    assert train(cfg, run_dir).step == 8
    assert checkpoint_module.checkpoint_file(run_dir) == run_dir / model_file


@pytest.mark.parametrize("average_last", [0, 1])
def test_average_last_below_two_averages_nothing(tmp_path: Path, average_last: int):
    cfg = tiny_config(tmp_path, "rnn", max_steps=4, validate_every=2, keep_last=3,
                      average_last=average_last)  # fmt: skip
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    assert len(step_checkpoints(run_dir)) >= 2  # there was something to average
    assert not (run_dir / "average.json").exists() and not (run_dir / "averaged.pt").exists()


def test_ctrl_c_while_the_average_validates_stops_the_command_and_a_rerun_averages(
    tmp_path: Path, monkeypatch
):
    cfg = tiny_config(tmp_path, "rnn", max_steps=4, validate_every=2, keep_last=2, average_last=2)
    run_dir = tmp_path / "run"
    interrupt_at(monkeypatch, "validation", 3)  # steps 2 and 4, then the average's
    with pytest.raises(Interrupted, match="interrupted while validating the average"):
        train(cfg, run_dir)
    assert not (run_dir / "average.json").exists()
    monkeypatch.setattr(faults, "pause_point", lambda name: None)
    assert train(cfg, run_dir).step == 4
    assert json.loads((run_dir / "average.json").read_text())["steps"] == [2, 4]


def test_an_average_older_than_the_latest_checkpoint_is_not_the_model(tmp_path: Path):
    cfg = tiny_config(tmp_path, "rnn", max_steps=4, validate_every=2, keep_last=2, average_last=2)
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    # Whatever the toy average scored, pretend it won; then train on past it without averaging.
    state = checkpoint_module.average_checkpoints(step_checkpoints(run_dir))
    checkpoint_module.save_checkpoint(state, run_dir / "averaged.pt")
    assert checkpoint_module.checkpoint_file(run_dir) == run_dir / "averaged.pt"
    longer = dataclasses.replace(cfg.train, max_steps=6, average_last=0)
    train(dataclasses.replace(cfg, train=longer), run_dir)
    assert checkpoint_module.checkpoint_file(run_dir) == run_dir / "best.pt"


def test_average_last_needs_the_checkpoints_it_averages(tmp_path: Path):
    cfg = tiny_config(tmp_path, "rnn", keep_last=3, average_last=5)
    with pytest.raises(
        UserError, match=r"train\.average_last=5 .* set train\.keep_last to at least 5"
    ):
        train(cfg, tmp_path / "run")
