"""Where a training run stands: its batches this epoch, and how much of its step, epoch and time
budget is spent."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from nmt.config import TrainConfig
from nmt.data.batching import padding_stats, plan_batches, shard
from nmt.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0
    epoch_batches_done: int = 0  # batches of this epoch's shard already trained on
    best_bleu: float = -1.0
    best_step: int = 0
    bad_validations: int = 0  # validations since the best, for early stopping
    last_validated: int = -1  # step of the latest completed validation
    validation_pending: bool = False  # due at `step` but cut short by Ctrl-C: redo on resume
    elapsed: float = 0.0  # seconds of training so far, validation included
    setup_seconds: float = 0.0  # data preparation and model building before the first step
    validation_seconds: float = 0.0  # how long the latest validation took
    nonfinite_steps: int = 0  # steps skipped in a row for a non-finite loss (train.max_nonfinite)
    world_size: int = 1  # processes that shared each step's batches

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        # Checkpoints from before these were saved had none.
        state = {"nonfinite_steps": 0, "world_size": 1, **state}
        for field in dataclasses.fields(self):
            setattr(self, field.name, state[field.name])

    def continue_on(self, world_size: int, accumulate: int) -> None:
        """Go on with `world_size` processes from where this epoch's batches stand. The epoch's
        order is the same for any number of processes, each taking every world_size-th batch,
        so the batches done so far, by all processes together, are shared out again (whole
        accumulation groups; a batch or so may be trained on twice)."""
        done = self.epoch_batches_done * self.world_size // world_size
        self.epoch_batches_done, self.world_size = done - done % accumulate, world_size


def epoch_plan(
    cfg: TrainConfig,
    src_lens: np.ndarray,
    tgt_lens: np.ndarray,
    epoch: int,
    rank: int,
    world_size: int,
) -> list[np.ndarray]:
    """This rank's batches (row indices) of `epoch`, a whole number of accumulation groups.

    The order is a pure function of (train.seed, epoch): a resumed run skips the batches its
    checkpoint counts as done and continues with exactly the next one.
    """
    plan = plan_batches(src_lens, tgt_lens, cfg.max_tokens, cfg.pad_multiple, seed=cfg.seed,
                        epoch=epoch)  # fmt: skip
    if rank == 0:
        waste = padding_stats(plan, src_lens, tgt_lens, cfg.pad_multiple)["padding"]
        log.info("epoch %d: %d batches, %.1f%% padding", epoch, len(plan), 100 * waste)
    plan = shard(plan, rank, world_size)
    usable = len(plan) - len(plan) % cfg.accumulate
    if usable == 0:
        raise UserError(
            f"no batch fits train.max_tokens={cfg.max_tokens} on {world_size} process(es) "
            f"with train.accumulate={cfg.accumulate}: raise train.max_tokens"
        )
    return plan[:usable]


def total_steps(
    cfg: TrainConfig, src_lens: np.ndarray, tgt_lens: np.ndarray, world_size: int
) -> int | None:
    """The step limit: max_steps, or what max_epochs amount to (for the linear schedule and
    the time left on the console)."""
    if cfg.max_epochs is None:
        return cfg.max_steps
    plan = plan_batches(src_lens, tgt_lens, cfg.max_tokens, cfg.pad_multiple)
    per_epoch = len(plan) // world_size // cfg.accumulate
    by_epochs = per_epoch * cfg.max_epochs
    return by_epochs if cfg.max_steps is None else min(cfg.max_steps, by_epochs)


def budget_used(cfg: TrainConfig, progress: Progress, step: int, steps: int | None) -> float:
    """How much of the run's budget is spent, 0 to 1: the furthest along of its step limit
    `steps` (max_steps or max_epochs) and its time limit (max_time, validation included)."""
    used = [step / steps] if steps else []
    if cfg.max_time is not None:
        used.append((progress.elapsed + progress.validation_seconds) / (60 * cfg.max_time))
    if not used:
        raise UserError(
            "train.schedule=linear decays to zero at the end of the budget: set "
            "train.max_steps, train.max_epochs or train.max_time"
        )
    return max(used)


def patience_ran_out(cfg: TrainConfig, progress: Progress) -> bool:
    """Early stopping: `train.patience` validations in a row without a better BLEU (a run that
    stopped so is finished, also when the same command starts it again)."""
    return cfg.patience is not None and progress.bad_validations >= cfg.patience


def over_limit(cfg: TrainConfig, progress: Progress) -> bool:
    """Whether a step, epoch or time limit is reached; the time budget keeps room for the final
    validation, which it expects to take as long as the latest one did."""
    over_steps = cfg.max_steps is not None and progress.step >= cfg.max_steps
    over_epochs = cfg.max_epochs is not None and progress.epoch >= cfg.max_epochs
    spent = progress.elapsed + progress.validation_seconds
    over_time = cfg.max_time is not None and spent >= 60 * cfg.max_time
    return over_steps or over_epochs or over_time
