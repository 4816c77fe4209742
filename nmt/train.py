"""`train(cfg, run_dir)`: the training loop, readable top to bottom.

setup (devices, data, model, optimiser, schedule, resume) -> loop (autocast forward,
label-smoothed loss, scaled backward, unscale, clip, step, schedule) -> periodic validation
(loss, BLEU, heatmaps) -> checkpoint. Under `torchrun` the same code trains with
DistributedDataParallel: every rank takes its shard of each epoch's batches, gradients are
all-reduced, and rank 0 alone validates, logs and writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from nmt.checkpoint import (
    BEST_NAME,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from nmt.config import Config, TrainConfig
from nmt.data import PreparedData, format_stats, prepare
from nmt.data.batching import (
    Batch,
    column,
    iterate_batches,
    padding_stats,
    plan_batches,
    shard,
)
from nmt.device import autocast, resolve_precision
from nmt.distributed import Distributed
from nmt.errors import UserError
from nmt.evaluate import validate
from nmt.models import build_model, model_summary
from nmt.models.base import Seq2Seq
from nmt.tracking import Tracker
from nmt.vocab import PAD_ID

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0
    position: int = 0  # batches of this epoch's shard already consumed
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0  # validations since the best, for early stopping
    last_validated: int = -1  # step of the latest validation
    elapsed: float = 0.0  # seconds of training so far, validation included
    setup_seconds: float = 0.0  # data preparation and model building before the first step
    validation_seconds: float = 0.0  # how long the latest validation took


@dataclasses.dataclass
class Run:
    """The parts of one training run, passed to the loop's functions."""

    cfg: Config
    run_dir: Path
    data: PreparedData
    model: Seq2Seq
    ddp: torch.nn.Module  # the model, wrapped in DistributedDataParallel when distributed
    forward: torch.nn.Module  # `ddp`, compiled when train.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    precision: torch.dtype
    dist: Distributed
    tracker: Tracker
    progress: Progress
    total_steps: int | None  # the step limit max_steps or max_epochs amount to, if any
    nonfinite: int = 0  # consecutive steps skipped for a non-finite loss


# One JSON line per validation in the run directory: the learning curve against wall time,
# which `scripts/time_to_quality.py` reads.
HISTORY_NAME = "validations.jsonl"


def train(cfg: Config, run_dir: Path) -> Progress:
    """Train `cfg.model` on `cfg.data`, writing checkpoints and TensorBoard logs to `run_dir`."""
    started = time.perf_counter()
    run = setup(cfg, run_dir)
    if run.progress.step == 0:
        run.progress.setup_seconds = time.perf_counter() - started
    try:
        loop(run)
    except KeyboardInterrupt:
        path = save(run, f"step_{run.progress.step}.pt")
        raise UserError(
            f"interrupted at step {run.progress.step}; saved {path}: run the same command "
            f"with hydra.run.dir={run_dir} to resume"
        ) from None
    finally:
        run.tracker.close(run.progress.best_bleu, run.progress.best_step, run.progress.step)
        run.dist.close()
    progress = run.progress
    log.info(
        "done: best BLEU %.2f at step %d (sacreBLEU, detokenized and cased, on %s, beam %d) "
        "in %.1f min; checkpoint %s",
        progress.best_bleu, progress.best_step, cfg.data.valid_split, cfg.train.valid_beam_size,
        progress.elapsed / 60, run_dir / BEST_NAME,
    )  # fmt: skip
    return progress


def setup(cfg: Config, run_dir: Path) -> Run:
    dist = Distributed.from_env(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, dist.device)
    data = dist.rank_zero_first(lambda: prepare(cfg.data))
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    model = build_model(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size)
    model.to(dist.device)
    train_split = data.splits[cfg.data.train_split]
    src_lens, tgt_lens = column(train_split, "src_len"), column(train_split, "tgt_len")
    summary = model_summary(model, _mean(src_lens), _mean(tgt_lens))
    if dist.is_main:
        log.info("data:\n%s", format_stats(data))
        log.info("model %s (precision %s, device %s):\n%s", cfg.model.arch, precision,
                 dist.device, summary)  # fmt: skip
    progress = Progress()
    total_steps = _total_steps(cfg.train, src_lens, tgt_lens, dist.world_size)
    optimizer = make_optimizer(model, cfg.train, dist.device)
    scheduler = make_scheduler(
        optimizer, cfg.train, lambda step: _budget_used(cfg.train, progress, step, total_steps)
    )
    scaler = torch.amp.GradScaler(dist.device.type, enabled=precision == torch.float16)
    checkpoint = latest_checkpoint(run_dir) if cfg.train.resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, map_location=dist.device)
        restore(state, model, optimizer, scheduler, scaler)
        for key, value in state["progress"].items():  # in place: the schedule reads it
            setattr(progress, key, value)
        if dist.is_main:
            log.info("resumed from %s at step %d", checkpoint, progress.step)
    ddp = DistributedDataParallel(model) if dist.world_size > 1 else model
    forward = torch.compile(ddp) if cfg.train.compile else ddp
    tracker = Tracker(run_dir, cfg, summary, enabled=dist.is_main)
    return Run(cfg, run_dir, data, model, ddp, forward, optimizer, scheduler, scaler,
               precision, dist, tracker, progress, total_steps)  # fmt: skip


def loop(run: Run) -> None:
    """Epochs of optimiser steps until a step, epoch, time or patience limit is reached."""
    cfg, progress = run.cfg.train, run.progress
    split = run.data.splits[run.cfg.data.train_split]
    src_lens, tgt_lens = column(split, "src_len"), column(split, "tgt_len")
    start = time.perf_counter() - progress.elapsed
    bar = tqdm(total=run.total_steps, initial=progress.step, disable=not run.dist.is_main,
               unit="step", dynamic_ncols=True, mininterval=1.0)  # fmt: skip
    window = _Window()
    stop = _over_limit(cfg, progress)  # a resumed run may already be done
    while not stop and (cfg.max_epochs is None or progress.epoch < cfg.max_epochs):
        plan = plan_batches(src_lens, tgt_lens, cfg.max_tokens, cfg.pad_multiple,
                            seed=cfg.seed, epoch=progress.epoch)  # fmt: skip
        if progress.position == 0 and run.dist.is_main:
            waste = padding_stats(plan, src_lens, tgt_lens, cfg.pad_multiple)["padding"]
            log.info("epoch %d: %d batches, %.1f%% padding", progress.epoch, len(plan), 100 * waste)
        plan = shard(plan, run.dist.rank, run.dist.world_size)
        usable = len(plan) - len(plan) % cfg.accumulate
        if usable == 0:
            raise UserError(
                f"no batch fits train.max_tokens={cfg.max_tokens} on {run.dist.world_size} "
                f"process(es) with train.accumulate={cfg.accumulate}: raise train.max_tokens"
            )
        batches = iterate_batches(split, plan[progress.position : usable], cfg.pad_multiple)
        for group in _groups(batches, cfg.accumulate):
            loss, num_tokens, grad_norm = train_step(run, group)
            progress.position += len(group)
            if loss is None:
                continue
            progress.step += 1
            progress.elapsed = time.perf_counter() - start
            if cfg.max_time is not None:  # clocks differ: every rank follows rank 0's, so
                # all stop together and a time-based schedule gives all the same rate
                progress.elapsed, progress.validation_seconds = run.dist.broadcast(
                    [progress.elapsed, progress.validation_seconds]
                )
            window.add(loss, num_tokens * run.dist.world_size, grad_norm)
            lr = run.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{window.rate():,.0f}", lr=f"{lr:.2e}",
                            refresh=False)  # fmt: skip
            bar.update(1)
            if progress.step % cfg.log_every == 0:
                run.tracker.train_scalars(progress.step, *window.means(), lr)
                window = _Window()
            stop = _over_limit(cfg, progress)
            if stop or progress.step % cfg.validate_every == 0:
                stop = validate_and_save(run) or stop
                if stop:
                    break
        else:
            progress.epoch, progress.position = progress.epoch + 1, 0
            if progress.last_validated != progress.step:
                stop = validate_and_save(run)
    if progress.last_validated != progress.step:
        validate_and_save(run)
    bar.close()


def train_step(run: Run, group: list[Batch]) -> tuple[float | None, int, float]:
    """One optimiser step over `group` (gradient accumulation).

    Returns the loss per target token (None if it was not finite and the step was skipped),
    the number of target tokens and the gradient norm before clipping.
    """
    cfg = run.cfg.train
    batches = [batch.to(run.dist.device) for batch in group]
    num_tokens = sum(batch.num_tgt_tokens for batch in batches)
    total = torch.zeros((), device=run.dist.device)
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        # Gradients are all-reduced once per step, on its last micro-batch.
        sync = nullcontext() if last or run.dist.world_size == 1 else run.ddp.no_sync()
        with sync:
            try:
                with autocast(run.dist.device, run.precision):
                    logits = run.forward(batch.src, batch.src_mask, batch.tgt_in).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch.tgt_out.flatten(),
                                       ignore_index=PAD_ID, label_smoothing=cfg.label_smoothing,
                                       reduction="sum")  # fmt: skip
                run.scaler.scale(loss / num_tokens).backward()
            except torch.OutOfMemoryError:
                raise UserError(
                    f"out of memory on a batch of source {tuple(batch.src.shape)} and target "
                    f"{tuple(batch.tgt_in.shape)}: lower train.max_tokens (now {cfg.max_tokens}) "
                    "and raise train.accumulate to keep the batch size"
                ) from None
        total += loss.detach()
    if not torch.isfinite(total):
        return _skip_step(run, num_tokens)
    run.scaler.unscale_(run.optimizer)
    max_norm = cfg.clip_norm if cfg.clip_norm > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.nonfinite = 0
    if cfg.schedule != "plateau":
        run.scheduler.step()
    return float(total) / num_tokens, num_tokens, grad_norm


def _skip_step(run: Run, num_tokens: int) -> tuple[None, int, float]:
    """Drop a step whose loss is inf/NaN; stop after train.max_nonfinite in a row."""
    run.optimizer.zero_grad(set_to_none=True)
    run.nonfinite += 1
    log.warning("non-finite loss at step %d: step skipped", run.progress.step + 1)
    if run.nonfinite >= run.cfg.train.max_nonfinite:
        raise UserError(
            f"the loss was not finite for {run.nonfinite} steps in a row: lower train.lr, "
            "raise train.warmup_steps or use train.precision=fp32"
        )
    return None, num_tokens, math.nan


def validate_and_save(run: Run) -> bool:
    """Validate and checkpoint on rank 0; say whether early-stopping patience has run out."""
    cfg, progress = run.cfg, run.progress
    progress.last_validated = progress.step
    if run.dist.is_main:
        started = time.perf_counter()
        result = validate(run.model, run.data, cfg, run.dist.device, run.precision)
        improved = result.bleu > progress.best_bleu
        if improved:
            progress.best_bleu, progress.best_step, progress.bad_validations = (
                result.bleu, progress.step, 0)  # fmt: skip
        else:
            progress.bad_validations += 1
        if cfg.train.schedule == "plateau":
            run.scheduler.step(result.bleu)
        run.tracker.validation(progress.step, result, run.model, run.data, run.dist.device)
        progress.validation_seconds = time.perf_counter() - started
        progress.elapsed += progress.validation_seconds  # the loop's clock counts it too
        log.info(
            "step %d | val loss %.3f ppl %.2f | BLEU %.2f chrF %.2f | best %.2f @ %d",
            progress.step, result.loss, result.perplexity, result.bleu, result.chrf,
            progress.best_bleu, progress.best_step,
        )  # fmt: skip
        _append_history(run, result, improved)
        save(run, f"step_{progress.step}.pt")
        if improved:
            save(run, BEST_NAME)
        prune_checkpoints(run.run_dir, cfg.train.keep_last)
    patience = cfg.train.patience
    stop = run.dist.broadcast_flag(patience is not None and progress.bad_validations >= patience)
    if cfg.train.schedule == "plateau":  # every rank follows rank 0's learning rate
        run.dist.broadcast_lr(run.optimizer)
    return stop


def _append_history(run: Run, result, improved: bool) -> None:
    progress = run.progress
    record = {
        "step": progress.step,
        "epoch": progress.epoch,
        # When this checkpoint was written: seconds since the first step, and since the
        # command started (data preparation and model building included).
        "train_seconds": round(progress.elapsed, 2),
        "since_launch_seconds": round(progress.setup_seconds + progress.elapsed, 2),
        "validation_seconds": round(progress.validation_seconds, 2),
        "loss": round(result.loss, 4),
        "bleu": round(result.bleu, 2),
        "chrf": round(result.chrf, 2),
        "best": improved,
    }
    with open(run.run_dir / HISTORY_NAME, "a", encoding="utf-8") as history:
        history.write(json.dumps(record) + "\n")


def save(run: Run, name: str) -> Path:
    path = run.run_dir / name
    if run.dist.is_main:
        save_checkpoint(checkpoint_state(run), path)
    return path


def checkpoint_state(run: Run) -> dict:
    """Everything needed to resume exactly, or to translate with no other file."""
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "progress": dataclasses.asdict(run.progress),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
        "config": dataclasses.asdict(run.cfg),
        "src_spm": run.data.src_tokenizer.path.read_bytes(),
        "tgt_spm": run.data.tgt_tokenizer.path.read_bytes(),
    }


def restore(state: dict, model, optimizer, scheduler, scaler) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    random.setstate(state["rng"]["python"])


def make_optimizer(model: Seq2Seq, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the Transformer paper's betas and epsilon; the fused kernel on CUDA."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(
        model.parameters(),
        cfg.lr,
        (0.9, 0.98),
        eps=1e-9,
        weight_decay=cfg.weight_decay,
        fused=fused,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    budget_used: Callable[[int], float] | None = None,
):
    """inverse_sqrt: linear warmup to train.lr, then lr·sqrt(warmup/step) (Vaswani et al. §5.3);
    linear: linear warmup, then a linear decay that reaches zero as the run's budget runs out
    (`budget_used(step)` goes from 0 to 1): under a fixed budget this beats a schedule that
    ignores the budget (Li et al. 2020, "Budgeted Training");
    plateau: halve the rate after 2 validations without a better BLEU; constant."""
    warmup = max(cfg.warmup_steps, 1)
    if cfg.schedule == "inverse_sqrt":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))
        )
    if cfg.schedule == "linear":
        if budget_used is None:
            raise ValueError("the linear schedule needs budget_used")
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(1.0 - budget_used(step), 0.0))
        )
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=2
        )
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise UserError(f"train.schedule={cfg.schedule}: use inverse_sqrt, linear, plateau or constant")


class _Window:
    """Training statistics since the last TensorBoard write."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.loss = self.tokens = self.grad_norm = 0.0
        self.steps = 0

    def add(self, loss: float, num_tokens: int, grad_norm: float) -> None:
        self.loss += loss * num_tokens
        self.tokens += num_tokens
        self.grad_norm += grad_norm
        self.steps += 1

    def rate(self) -> float:
        """Target tokens per second (all ranks)."""
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)

    def means(self) -> tuple[float, float, float]:
        """Token-weighted loss, gradient norm and tokens/s."""
        return (self.loss / max(self.tokens, 1), self.grad_norm / max(self.steps, 1), self.rate())


def _groups(batches, size: int):
    group: list[Batch] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def _total_steps(cfg: TrainConfig, src_lens, tgt_lens, world_size: int) -> int | None:
    """The step limit, for the progress bar's ETA: max_steps, or what max_epochs amount to."""
    if cfg.max_epochs is None:
        return cfg.max_steps
    plan = plan_batches(src_lens, tgt_lens, cfg.max_tokens, cfg.pad_multiple)
    per_epoch = len(plan) // world_size // cfg.accumulate
    by_epochs = per_epoch * cfg.max_epochs
    return by_epochs if cfg.max_steps is None else min(cfg.max_steps, by_epochs)


def _budget_used(cfg: TrainConfig, progress: Progress, step: int, total_steps: int | None) -> float:
    """How much of the run's budget is spent, 0 to 1: the furthest along of its step limit
    (max_steps or max_epochs) and its time limit (max_time, validation included)."""
    used = [step / total_steps] if total_steps else []
    if cfg.max_time is not None:
        used.append((progress.elapsed + progress.validation_seconds) / (60 * cfg.max_time))
    if not used:
        raise UserError(
            "train.schedule=linear decays to zero at the end of the budget: set "
            "train.max_steps, train.max_epochs or train.max_time"
        )
    return max(used)


def _over_limit(cfg: TrainConfig, progress: Progress) -> bool:
    """Whether to stop; the time budget keeps room for the final validation, which it
    expects to take as long as the latest one did."""
    over_steps = cfg.max_steps is not None and progress.step >= cfg.max_steps
    spent = progress.elapsed + progress.validation_seconds
    over_time = cfg.max_time is not None and spent >= 60 * cfg.max_time
    return over_steps or over_time


def _mean(values: list[int]) -> float:
    return sum(values) / max(len(values), 1)
