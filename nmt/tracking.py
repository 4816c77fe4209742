"""What a training run reports: TensorBoard (scalars, sample translations, attention heatmaps)
and progress on the console (a bar on a terminal, plain lines in a redirected log).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from nmt import viz
from nmt.config import Config
from nmt.data import PreparedData
from nmt.evaluate import ValidationResult, attention_maps
from nmt.models import ModelSummary
from nmt.models.base import Seq2Seq

log = logging.getLogger(__name__)

NUM_SAMPLES = 5  # sample translations shown per validation


@dataclasses.dataclass
class TrainStats:
    """Sums over the steps since the last TensorBoard write. They are saved in checkpoints, so
    a run resumed mid-window writes the same averages as one that never stopped; the clock is
    not (tokens per second are a property of the process, not of the run)."""

    loss_sum: float = 0.0  # Σ loss per token · tokens
    num_tokens: int = 0  # target tokens, all ranks
    grad_norm_sum: float = 0.0
    num_steps: int = 0

    def __post_init__(self) -> None:
        self.started = time.perf_counter()

    def add(self, loss: float, num_tokens: int, grad_norm: float) -> None:
        self.loss_sum += loss * num_tokens
        self.num_tokens += num_tokens
        self.grad_norm_sum += grad_norm
        self.num_steps += 1

    def tokens_per_second(self) -> float:
        return self.num_tokens / max(time.perf_counter() - self.started, 1e-9)

    def state_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, float]) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, state[field.name])


class Tracker:
    """Writes `run_dir/tensorboard/` and the console progress on rank 0; on other ranks every
    method does nothing.

    A run that starts at `start_step` has TensorBoard drop what a killed process logged beyond
    that checkpoint (`purge_step`), so every step appears once in the curves. The
    statistics window is state (`state_dict`), so a run resumed mid-window logs what a run that
    never stopped logs.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        summary: ModelSummary,
        *,
        enabled: bool,
        start_step: int,
        total_steps: int | None,
    ) -> None:
        self.cfg, self.summary = cfg, summary
        self.stats = TrainStats()
        # Other ranks keep no writer: one event file, one console, however many processes.
        self.writer = self.console = None
        if enabled:
            # Steps after the checkpoint (all of them on a fresh start) are redone: drop them.
            purge_step = start_step + 1 if start_step else 0
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
            self.writer.add_text("model", f"```\n{summary}\n```")
            max_time = cfg.train.max_time
            self.console = ConsoleProgress(
                total_steps=total_steps, step=start_step,
                time_budget=60 * max_time if max_time is not None else None,
            )  # fmt: skip

    def step(self, step: int, elapsed: float, loss: float, num_tokens: int, grad_norm: float,
             lr: float) -> None:  # fmt: skip
        """One optimiser step: the console every step, TensorBoard every train.log_every."""
        if not self.writer:
            return
        self.stats.add(loss, num_tokens, grad_norm)
        stats = self.stats
        mean_loss = stats.loss_sum / max(stats.num_tokens, 1)
        self.console.update(step, elapsed, mean_loss, stats.tokens_per_second(), lr)
        if step % self.cfg.train.log_every:
            return
        self.writer.add_scalar("train/loss", mean_loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/grad_norm", stats.grad_norm_sum / max(stats.num_steps, 1),
                               step)  # fmt: skip
        self.writer.add_scalar("train/target_tokens_per_s", stats.tokens_per_second(), step)
        self.stats = TrainStats()

    def state_dict(self) -> dict[str, float]:
        """The statistics window (see the class docstring)."""
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.stats.load_state_dict(state)

    def validation(
        self,
        step: int,
        result: ValidationResult,
        model: Seq2Seq,
        data: PreparedData,
        device: torch.device,
    ) -> None:
        """Scalars, a table of sample translations, and heatmaps of fixed validation sentences.

        Only the sentences validation translated can be shown (`train.max_valid_sentences` may
        be fewer than NUM_SAMPLES or `train.num_heatmaps`).
        """
        if not self.writer:
            return
        for name in ("loss", "perplexity", "bleu", "chrf"):
            self.writer.add_scalar(f"valid/{name}", getattr(result, name), step)
        split = data.splits[self.cfg.data.valid_split]
        num_translated = len(result.hypotheses)
        rows = ["| source | reference | hypothesis |", "| --- | --- | --- |"]
        for index in range(min(NUM_SAMPLES, num_translated)):
            rows.append(
                f"| {split[index]['src']} | {split[index]['ref']} | {result.hypotheses[index]} |"
            )
        rows.append(f"\nBLEU {result.bleu:.2f} ({result.bleu_signature})")
        self.writer.add_text("valid/samples", "\n".join(rows), step)
        for index in range(min(self.cfg.train.num_heatmaps, num_translated)):
            hyp_ids = result.hypothesis_ids[index]
            self._heatmaps(step, index, model, data, split[index], hyp_ids, device)

    def _heatmaps(self, step, index, model, data, row, hyp_ids: list[int], device) -> None:
        """Per decoder layer the head-averaged map; the last layer's heads as a grid.

        The model reads its own hypothesis, the search's subwords, by teacher forcing
        (`attention_maps`), which gives every layer and head at once and the same weights the
        search saw.
        """
        layers = attention_maps(model, row["src_ids"], hyp_ids, device)
        src_labels = [*data.src_tokenizer.pieces(row["src_ids"]), "</s>"]
        tgt_labels = [*data.tgt_tokenizer.pieces(hyp_ids), "</s>"]
        for layer, attn in enumerate(layers):
            figure = viz.heatmap(attn.mean(0).numpy(), src_labels, tgt_labels, f"layer {layer}")
            image = viz.to_image(figure)
            self.writer.add_image(
                f"attention/{index}/layer_{layer}", image, step, dataformats="HWC"
            )
        if layers and layers[-1].shape[0] > 1:
            grid = viz.head_grid(layers[-1].numpy(), src_labels, tgt_labels, "last layer")
            self.writer.add_image(
                f"attention/{index}/last_layer_heads", viz.to_image(grid), step, dataformats="HWC"
            )

    def close(self, best_bleu: float, best_step: int, final_step: int) -> None:
        """Record the run's settings against its best BLEU in TensorBoard's hparams panel, so
        runs of a sweep can be compared side by side."""
        if not self.writer:
            return
        self.console.close()
        hparams = {
            "model": self.cfg.model.arch,
            "data": self.cfg.data.name,
            "parameters": self.summary.num_parameters,
            **{f"train.{k}": v for k, v in dataclasses.asdict(self.cfg.train).items()
               if isinstance(v, (int, float, str, bool))},
        }  # fmt: skip
        metrics = {"hparam/best_bleu": best_bleu, "hparam/best_step": best_step,
                   "hparam/final_step": final_step}  # fmt: skip
        self.writer.add_hparams(hparams, metrics, run_name="hparams")
        self.writer.close()


class ConsoleProgress:
    """Training progress on stderr, with the time left under whichever budget ends first.

    On a terminal, a tqdm bar redrawn in place; otherwise (a redirected log, a batch job) one
    plain log line every `interval` seconds, so the log stays readable line by line instead of
    one line of carriage returns.
    """

    def __init__(
        self,
        *,
        total_steps: int | None,
        step: int,
        time_budget: float | None,
        interval: float = 60.0,
    ) -> None:
        self.total_steps, self.time_budget, self.interval = total_steps, time_budget, interval
        self.first_step, self.started = step, time.perf_counter()
        self.last_line = self.started
        self.estimated = False  # the one up-front estimate of the whole run's length is out
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True,
                            mininterval=1.0)  # fmt: skip

    def time_left(self, step: int, elapsed: float) -> float | None:
        """Seconds until the step budget (at this process's pace) or the time budget ends."""
        left = []
        steps_done = step - self.first_step
        if self.total_steps is not None and steps_done > 0:
            pace = (time.perf_counter() - self.started) / steps_done
            left.append((self.total_steps - step) * pace)
        if self.time_budget is not None:
            left.append(self.time_budget - elapsed)
        return max(min(left), 0.0) if left else None

    def update(self, step: int, elapsed: float, loss: float, tokens_per_s: float, lr: float):
        left = self.time_left(step, elapsed)
        if not self.estimated:
            self._estimate(step, elapsed)
        fields = {"loss": f"{loss:.3f}", "tok/s": f"{tokens_per_s:,.0f}", "lr": f"{lr:.2e}"}
        if left is not None:
            fields["left"] = _minutes(left)
        if self.bar is not None:  # refresh=False: tqdm redraws at most once a second anyway
            self.bar.set_postfix(fields, refresh=False)
            self.bar.update(step - self.bar.n)
        elif time.perf_counter() - self.last_line >= self.interval:
            self.last_line = time.perf_counter()
            of = f"/{self.total_steps}" if self.total_steps else ""
            details = " | ".join(f"{key} {value}" for key, value in fields.items())
            log.info("step %d%s | %s | %s elapsed", step, of, details, _minutes(elapsed))

    def _estimate(self, step: int, elapsed: float) -> None:
        """Once the first steps have set the pace (20 steps and 10 s, or 200 steps), say how
        long the run will take on this device, so that whoever started it knows what they
        started: 30 epochs are minutes on a GPU and hours on a laptop."""
        steps_done, seconds = step - self.first_step, time.perf_counter() - self.started
        if not (steps_done >= 200 or (steps_done >= 20 and seconds >= 10)):
            return
        self.estimated = True
        pace = steps_done / seconds
        ends = []  # (seconds left, what ends then) for each budget
        if self.total_steps is not None:
            steps_left = max(self.total_steps - step, 0)
            ends.append((steps_left / pace, f"for {steps_left:,} more steps"))
        if self.time_budget is not None:
            ends.append((max(self.time_budget - elapsed, 0.0), "until train.max_time"))
        if ends:
            left, what = min(ends)
            log.info("estimate: %s of training %s at the measured %.2f steps/s, validation "
                     "not included", _minutes(left), what, pace)  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _minutes(seconds: float) -> str:
    """h:mm:ss or m:ss."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
