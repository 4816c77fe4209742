"""A training run's parts (`Run`): built for a run directory, and saved into and restored
from its checkpoints.

Every stateful part (model, optimiser, schedule, scaler, progress, statistics, each rank's RNGs)
goes into each checkpoint (`state_dict`) and comes back from it (`load_state_dict`), so a run
stopped at any moment resumes to exactly the parameters, losses and validations of a run that
never stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from nmt.checkpoint import latest_checkpoint, read_entry
from nmt.config import Config
from nmt.data import PreparedData, format_stats, prepare
from nmt.data.batching import length_array
from nmt.device import describe_device, load_rng_state, precision_hint, resolve_precision
from nmt.distributed import Distributed
from nmt.models import build_model, model_summary
from nmt.models.base import Seq2Seq
from nmt.optim import Schedule, linear_peak, make_optimizer
from nmt.progress import Progress, budget_used, total_steps
from nmt.run_dir import RunDir
from nmt.signals import StopRequest
from nmt.tracking import Tracker

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """The parts of one training run, passed to the loop's functions."""

    cfg: Config
    run_dir: RunDir
    data: PreparedData
    model: Seq2Seq  # the parameters: what is saved, validated and translated
    wrapped: torch.nn.Module  # what runs the forward pass: `model` in DDP and/or compiled
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    precision: torch.dtype
    dist: Distributed
    stop: StopRequest
    progress: Progress
    tracker: Tracker | None = None  # made once the resumed step is known
    clock_start: float = 0.0  # perf_counter() at which `progress.elapsed` was 0


def with_device_defaults(cfg: Config, device: torch.device, run_dir: Path) -> Config:
    """`cfg` with the settings whose default follows the device (null in the config) made
    concrete: padding lengths to multiples of 8 feeds a GPU's tensor cores but on a CPU only
    adds work (17.5% padding against 2.3% on a 1M-pair corpus). A resumed run keeps the value
    it started with, since it fixes the batches; the checkpoint records what ran."""
    if cfg.train.pad_multiple is not None:
        return cfg
    latest = latest_checkpoint(run_dir) if cfg.train.resume and run_dir.is_dir() else None
    saved = read_entry(latest, "config").get("train", {}).get("pad_multiple") if latest else None
    pad_multiple = saved or (8 if device.type == "cuda" else 1)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, pad_multiple=pad_multiple))


def setup(cfg: Config, run_dir: RunDir, dist: Distributed, stop: StopRequest) -> Run:
    """Data, model, optimiser and schedule, restored from the latest checkpoint when resuming."""
    precision = resolve_precision(cfg.train.precision, dist.device)
    data = dist.rank_zero_first(lambda: prepare(cfg.data))
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    model = build_model(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size)
    model.to(dist.device)
    split = data.splits[cfg.data.train_split]
    src_lens, tgt_lens = length_array(split, "src_len"), length_array(split, "tgt_len")
    summary = model_summary(model, float(src_lens.mean()), float(tgt_lens.mean()))
    if dist.is_main:
        log.info("data:\n%s", format_stats(data))
        log.info("model %s (precision %s, device %s):\n%s", cfg.model.arch, precision,
                 describe_device(dist.device), summary)  # fmt: skip
        if hint := precision_hint(cfg.train.precision, dist.device):
            log.info(hint)
    progress = Progress(world_size=dist.world_size)
    steps = total_steps(cfg.train, src_lens, tgt_lens, dist.world_size)
    if dist.is_main and steps and cfg.train.schedule == "linear" and cfg.train.max_time is None:
        peak_step, peak_lr = linear_peak(cfg.train, steps)
        log.info("schedule linear: peak lr %.2e (%.0f%% of train.lr) at step %s, zero at step %s",
                 peak_lr, 100 * peak_lr / cfg.train.lr, f"{peak_step:,}", f"{steps:,}")  # fmt: skip
    wrapped = DistributedDataParallel(model) if dist.world_size > 1 else model
    run = Run(
        cfg=cfg, run_dir=run_dir, data=data, model=model, precision=precision, dist=dist,
        wrapped=torch.compile(wrapped) if cfg.train.compile else wrapped,
        optimizer=make_optimizer(model, cfg.train, dist.device),
        schedule=Schedule(cfg.train, lambda step: budget_used(cfg.train, progress, step, steps)),
        scaler=torch.amp.GradScaler(dist.device.type, enabled=precision == torch.float16),
        stop=stop, progress=progress,
    )  # fmt: skip
    state = run_dir.latest_state(cfg, map_location=dist.device, is_main=dist.is_main)
    run.tracker = Tracker(run_dir.path, cfg, summary, enabled=dist.is_main, total_steps=steps,
                          start_step=state["progress"]["step"] if state else 0)  # fmt: skip
    if state is not None:
        load_state_dict(run, state)
    if progress.world_size != dist.world_size:
        if dist.is_main:
            log.info("this run trained on %d process(es) and goes on with %d: the steps per "
                     "epoch change with them", progress.world_size, dist.world_size)  # fmt: skip
        progress.continue_on(dist.world_size, cfg.train.accumulate)
    if dist.is_main:
        run_dir.tidy(progress, cfg)
    return run


def state_dict(run: Run, rng_states: list) -> dict:
    """Everything needed to resume exactly, or to translate with no other file. `rng_states`
    holds every rank's random generators (`rng_state`), in rank order: each rank draws its own
    dropout masks, and so resumes its own."""
    parts = _stateful_parts(run)
    return {
        **{name: part.state_dict() for name, part in parts.items()},
        "rng": rng_states[0],
        "rng_ranks": rng_states,
        "config": dataclasses.asdict(run.cfg),
        "src_spm": run.data.src_tokenizer.path.read_bytes(),
        "tgt_spm": run.data.tgt_tokenizer.path.read_bytes(),
    }


def load_state_dict(run: Run, state: dict) -> None:
    """The mirror of `state_dict`. A part saved empty (the GradScaler of an fp32/bf16 run) keeps
    its fresh state; the optimiser takes the configured weight decay."""
    for name, part in _stateful_parts(run).items():
        if state[name]:
            part.load_state_dict(state[name])
    for param_group in run.optimizer.param_groups:
        param_group["weight_decay"] = run.cfg.train.weight_decay
    # A checkpoint from before per-rank states, or from another number of ranks (whose data
    # plan differs anyway), gives every rank rank 0's generators.
    rng_states = state.get("rng_ranks", [])
    same_ranks = len(rng_states) == run.dist.world_size
    load_rng_state(rng_states[run.dist.rank] if same_ranks else state["rng"])


def _stateful_parts(run: Run) -> dict:
    return {"model": run.model, "optimizer": run.optimizer, "schedule": run.schedule,
            "scaler": run.scaler, "progress": run.progress, "stats": run.tracker}  # fmt: skip
