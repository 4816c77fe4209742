"""The optimiser; the learning rate as a pure function of the step (plus a plateau's halvings):
warm-up, then the inverse square root, a linear decay to zero at the end of the budget, or a
constant; and what to change when training diverges.

The trainer sets each step's rate from `Schedule.lr(step)`, so a resumed run, or one resumed
with a new `train.lr`, gets the rate its settings say with no scheduler state to reconcile; the
only state is the plateau schedule's, saved in checkpoints like every other stateful part.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from nmt.config import TrainConfig
from nmt.errors import UserError

SCHEDULES = ("inverse_sqrt", "linear", "plateau", "constant")
# Plateau: halve the rate once more than PLATEAU_PATIENCE validations in a row fail to beat the
# best BLEU by a relative PLATEAU_THRESHOLD (PyTorch's ReduceLROnPlateau in mode "max").
PLATEAU_PATIENCE, PLATEAU_THRESHOLD, PLATEAU_FACTOR = 2, 1e-4, 0.5


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW with the Transformer paper's betas and epsilon (§5.3); the fused kernel on CUDA.
    The rate passed here is replaced before every step by `Schedule.lr`."""
    return torch.optim.AdamW(
        model.parameters(), cfg.lr, (0.9, 0.98), eps=1e-9, weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",
    )  # fmt: skip


def divergence_advice(cfg: TrainConfig, *, fp32: bool, resume_from: Path | None) -> str:
    """What to change when the loss or parameters stop being finite, fitted to the run's own
    settings (no "use fp32" to an fp32 run), and the finite checkpoint to resume from."""
    advice = [f"lower train.lr (now {cfg.lr:g})",
              f"raise train.warmup_steps (now {cfg.warmup_steps})"]  # fmt: skip
    if cfg.clip_norm <= 0:
        advice.append("set train.clip_norm=1.0")
    if not fp32:
        advice.append(f"use train.precision=fp32 (now {cfg.precision})")
    where = f"; rerun with that to resume from {resume_from}" if resume_from else ""
    return " or ".join(advice) + where


class Schedule:
    """inverse_sqrt: linear warm-up to train.lr, then lr·sqrt(warmup/step) (Vaswani et al. §5.3);
    linear: the lower of a linear warm-up and a line that falls from train.lr to zero as the
    run's budget runs out (`budget_used(step)` goes from 0 to 1): under a fixed budget this
    beats a schedule that ignores the budget (Li et al. 2020, "Budgeted Training"); the two
    lines cross before warm-up ends, so the rate peaks below train.lr (`linear_peak`);
    plateau: train.lr, halved after validations without a better BLEU (no warm-up); constant:
    train.lr.
    """

    def __init__(self, cfg: TrainConfig, budget_used: Callable[[int], float]) -> None:
        if cfg.schedule not in SCHEDULES:
            raise UserError(f"train.schedule={cfg.schedule}: use {', '.join(SCHEDULES)}")
        self.cfg, self.budget_used = cfg, budget_used
        self.scale = 1.0  # the plateau's halvings so far
        self.best_bleu, self.bad_validations = -math.inf, 0

    def lr(self, step: int) -> float:
        """The rate of the optimiser step that follows `step` completed steps."""
        return self.cfg.lr * self._factor(step)

    def _factor(self, step: int) -> float:
        schedule, warmup = self.cfg.schedule, max(self.cfg.warmup_steps, 1)
        if schedule == "inverse_sqrt":
            return min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))
        if schedule == "linear":
            return min((step + 1) / warmup, max(1.0 - self.budget_used(step), 0.0))
        return self.scale  # plateau (1.0 until it halves) and constant

    def validated(self, bleu: float) -> None:
        """Count a validation: the plateau schedule halves the rate when BLEU stalls."""
        if self.cfg.schedule != "plateau":
            return
        if bleu > self.best_bleu * (1 + PLATEAU_THRESHOLD):
            self.best_bleu, self.bad_validations = bleu, 0
        else:
            self.bad_validations += 1
        if self.bad_validations > PLATEAU_PATIENCE:
            self.scale, self.bad_validations = self.scale * PLATEAU_FACTOR, 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "best_bleu": self.best_bleu,
                "bad_validations": self.bad_validations}  # fmt: skip

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale, self.best_bleu = state["scale"], state["best_bleu"]
        self.bad_validations = int(state["bad_validations"])


def linear_peak(cfg: TrainConfig, steps: int) -> tuple[int, float]:
    """The step at which the linear schedule's rate peaks under a budget of `steps`, and that
    rate: where the warm-up ramp meets the falling line, train.lr·(steps + 1)/(steps + warmup)
    or so, e.g. 78% of train.lr for 2,000 warm-up steps in 6,960. Logged at the start of a run,
    so that a rate set with a long warm-up in a short budget does not surprise."""
    warmup = max(cfg.warmup_steps, 1)
    crossing = (warmup - 1) * steps / (steps + warmup)
    schedule = Schedule(cfg, lambda step: step / steps)
    step = max((math.floor(crossing), math.ceil(crossing)), key=schedule.lr)
    return step, schedule.lr(step)
