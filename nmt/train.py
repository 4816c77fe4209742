"""`train(cfg, run_dir)`: the training loop, readable top to bottom.

setup (lock the run directory, data, model, optimiser, schedule, resume) -> optimiser steps
(autocast forward, label-smoothed loss, scaled backward, unscale, clip, step) -> after each
step, one place (`after_step`) decides whether to validate, checkpoint or stop. Under `torchrun`
the same code trains with DistributedDataParallel: every rank takes its shard of each epoch's
batches, gradients are all-reduced, and rank 0 alone validates, logs and writes checkpoints.

A run's parts are built and restored in `nmt.training_run`; each checkpoint holds all of them,
so a run stopped at any moment (SIGKILL; or Ctrl-C, which lets the current step finish) resumes
to exactly the parameters, losses and validations of a run that never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from nmt import faults
from nmt.checkpoint import (
    AVERAGED_NAME,
    BEST_NAME,
    NonFiniteParameters,
    average_checkpoints,
    checkpoint_file,
    latest_checkpoint,
    nonfinite_tensors,
    step_checkpoints,
)
from nmt.config import Config, check_config
from nmt.config_checks import check_search
from nmt.data.batching import Batch, chunks, iterate_batches, length_array
from nmt.device import autocast, rng_state
from nmt.distributed import Distributed
from nmt.errors import Interrupted, UserError
from nmt.evaluate import ValidationResult, cross_entropy_sum, validate
from nmt.optim import divergence_advice
from nmt.progress import (
    Progress,
    epoch_plan,
    over_limit,
    patience_ran_out,
)
from nmt.run_dir import RunDir
from nmt.signals import StopRequest
from nmt.training_run import Run, setup, state_dict, with_device_defaults

log = logging.getLogger(__name__)


def train(cfg: Config, run_dir: Path) -> Progress:
    """Train `cfg.model` on `cfg.data`, writing checkpoints and TensorBoard logs to `run_dir`;
    continue from its latest checkpoint if it has one (and `train.resume`)."""
    started = time.perf_counter()
    check_config(cfg)  # a Config built in Python has not been through `to_config`
    check_search(cfg.decode)  # the search its checkpoints will carry
    dist = Distributed.from_env(cfg.train.device)
    cfg = with_device_defaults(cfg, dist.device, run_dir)
    directory = RunDir(run_dir)
    with directory.lock(enabled=dist.is_main), StopRequest() as stop:
        run = setup(cfg, directory, dist, stop)
        progress = run.progress
        progress.setup_seconds = progress.setup_seconds or time.perf_counter() - started
        try:
            loop(run)
            if dist.is_main:
                average_last(run)
        except KeyboardInterrupt:  # a second Ctrl-C outside a checkpoint write
            raise Interrupted(
                f"stopped at once, without saving: run the same command with "
                f"hydra.run.dir={run_dir} to resume from {latest_checkpoint(run_dir) or 'scratch'}"
            ) from None
        finally:
            run.tracker.close(progress.best_bleu, progress.best_step, progress.step)
            dist.close()
    if dist.is_main:  # the other ranks know no BLEU
        log.info("done: best BLEU %.2f at step %d (sacreBLEU, detokenized and cased, on %s, "
                 "beam %d) in %.1f min; the run's model: %s", progress.best_bleu,
                 progress.best_step, cfg.data.valid_split, cfg.train.valid_beam_size,
                 progress.elapsed / 60, checkpoint_file(run_dir))  # fmt: skip
    return progress


def loop(run: Run) -> None:
    """Epochs of optimiser steps until `after_step` says stop."""
    cfg, progress = run.cfg.train, run.progress
    split = run.data.splits[run.cfg.data.train_split]
    src_lens, tgt_lens = length_array(split, "src_len"), length_array(split, "tgt_len")
    run.clock_start = time.perf_counter() - progress.elapsed
    # A resumed run may be finished, or owe the validation that a Ctrl-C cut short.
    stop = ((progress.validation_pending and validate_and_save(run)) or over_limit(cfg, progress)
            or patience_ran_out(cfg, progress))  # fmt: skip
    while not stop:
        plan = epoch_plan(cfg, src_lens, tgt_lens, progress.epoch, run.dist.rank,
                          run.dist.world_size)  # fmt: skip
        usable = len(plan)
        if progress.epoch_batches_done >= usable:  # resumed on more processes at its very end
            progress.epoch, progress.epoch_batches_done = progress.epoch + 1, 0
            continue
        # The plan is a pure function of (seed, epoch): skipping the batches done resumes at
        # exactly the next one.
        batches = iterate_batches(split, plan[progress.epoch_batches_done :], cfg.pad_multiple)
        for group in chunks(batches, cfg.accumulate):
            stepped = train_step(run, group)
            progress.epoch_batches_done += len(group)
            end_of_epoch = progress.epoch_batches_done == usable
            if end_of_epoch:  # before after_step, so a checkpoint here resumes in the next epoch
                progress.epoch, progress.epoch_batches_done = progress.epoch + 1, 0
            if stop := after_step(run, stepped=stepped, end_of_epoch=end_of_epoch):
                break


def after_step(run: Run, *, stepped: bool, end_of_epoch: bool) -> bool:
    """The one place that decides what follows a step: validate and checkpoint every
    `train.validate_every` steps, at each epoch's end and at the last step; stop at a limit,
    when patience runs out, or, with a checkpoint, at Ctrl-C. Returns whether to stop."""
    cfg, progress = run.cfg.train, run.progress
    progress.elapsed = time.perf_counter() - run.clock_start
    if cfg.max_time is not None:  # clocks differ: every rank follows rank 0's, so all stop
        # together and a time-based schedule gives all the same rate
        progress.elapsed, progress.validation_seconds = run.dist.broadcast(
            [progress.elapsed, progress.validation_seconds]
        )
    finished = over_limit(cfg, progress)
    due = 0 < progress.step != progress.last_validated and (
        finished or end_of_epoch or progress.step % cfg.validate_every == 0
    )
    # Agreed by all ranks, so that every process stops after the same step.
    if run.dist.any_rank(run.stop.requested):
        progress.validation_pending = due
        save_and_stop(run)
    return (due and validate_and_save(run)) or finished


def train_step(run: Run, group: list[Batch]) -> bool:
    """One optimiser step over `group` (gradient accumulation), reported to the tracker.
    Returns False if the loss was not finite and the step was skipped."""
    cfg, progress = run.cfg.train, run.progress
    # The rate comes from the schedule each step, not from optimiser state: a resumed run
    # given a new train.lr uses it at once.
    lr = run.schedule.lr(progress.step)
    for param_group in run.optimizer.param_groups:
        param_group["lr"] = lr
    batches = [batch.to(run.dist.device) for batch in group]
    num_tokens = sum(batch.num_tgt_tokens for batch in batches)
    # The step's loss is the mean over every rank's target tokens: DDP averages the ranks'
    # gradients, so each rank divides its summed loss by the step's tokens per rank.
    all_tokens = run.dist.sum(num_tokens)
    per_rank = num_tokens if run.dist.world_size == 1 else all_tokens / run.dist.world_size
    total = torch.zeros((), device=run.dist.device)
    for index, batch in enumerate(batches):
        # Gradients are all-reduced once per step, on its last micro-batch.
        last = index == len(batches) - 1
        with nullcontext() if last or run.dist.world_size == 1 else run.wrapped.no_sync():
            total += _forward_backward(run, batch, per_rank)
    faults.pause_point("step")  # mid-step: gradients computed, parameters not yet updated
    # Every rank skips together: one rank's inf has reached the others' gradients through the
    # all-reduce, and ranks that disagreed on stepping would part ways on their step counts.
    if run.dist.any_rank(not bool(torch.isfinite(total))):
        _skip_step(run)
        return False
    run.scaler.unscale_(run.optimizer)
    max_norm = cfg.clip_norm if cfg.clip_norm > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    progress.nonfinite_steps, progress.step = 0, progress.step + 1
    # float(total) waits for the step to finish: the console and TensorBoard see real numbers.
    elapsed = time.perf_counter() - run.clock_start
    run.tracker.step(progress.step, elapsed, float(total) / num_tokens, all_tokens, grad_norm,
                     lr)  # fmt: skip
    return True


def _forward_backward(run: Run, batch: Batch, num_tokens: float) -> torch.Tensor:
    """Backpropagate one micro-batch's share of the step's mean loss (`num_tokens`: the
    step's target tokens per rank); its summed loss."""
    try:
        with autocast(run.dist.device, run.precision):
            logits = run.wrapped(batch.src, batch.src_mask, batch.tgt_in).logits
        loss = cross_entropy_sum(logits, batch.tgt_out,
                                 label_smoothing=run.cfg.train.label_smoothing)  # fmt: skip
        run.scaler.scale(loss / num_tokens).backward()
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of memory on a batch of source {tuple(batch.src.shape)} and target "
            f"{tuple(batch.tgt_in.shape)}: lower train.max_tokens (now "
            f"{run.cfg.train.max_tokens}) and raise train.accumulate to keep the batch size"
        ) from None
    return loss.detach()


def _skip_step(run: Run) -> None:
    """Drop a step whose loss is inf/NaN (an fp16 overflow passes); stop at once if the
    parameters themselves are gone, or after train.max_nonfinite such steps in a row."""
    run.optimizer.zero_grad(set_to_none=True)
    skipped = run.progress.nonfinite_steps = run.progress.nonfinite_steps + 1
    if nonfinite_tensors(run.model.state_dict()):
        raise UserError(_divergence(run, "the parameters are no longer finite"))
    if skipped >= run.cfg.train.max_nonfinite:
        raise UserError(_divergence(run, f"the loss was not finite {skipped} times in a row"))
    log.warning("non-finite loss at step %d: step skipped", run.progress.step + 1)


def _divergence(run: Run, what: str) -> str:
    """`what` happened at the coming step, the advice for this run, and where to resume."""
    resume_from = latest_checkpoint(run.run_dir.path)
    return f"{what} at step {run.progress.step + 1}: " + divergence_advice(
        run.cfg.train, fp32=run.precision == torch.float32, resume_from=resume_from
    )


def validate_and_save(run: Run) -> bool:
    """Validate and checkpoint on rank 0; say whether early-stopping patience has run out.

    The validation itself changes nothing, so Ctrl-C abandons it at once and the checkpoint
    then written keeps it pending for the resumed run. Committing its result (progress,
    TensorBoard, history, checkpoint, best.pt) is never interrupted.
    """
    progress = run.progress
    progress.validation_pending = True
    rng_states = run.dist.gather_to_main(rng_state())  # validating draws no random numbers
    result = _validate(run) if run.dist.is_main else None
    if run.dist.broadcast_flag(run.dist.is_main and result is None):
        save_and_stop(run)
    if run.dist.is_main:
        with run.stop.deferred():
            _commit_validation(run, result, rng_states)
    # What rank 0 decided or measured, on every rank: the plateau's scale, and the clock and
    # validation time a time-budget schedule reads at the next step.
    run.schedule.scale, progress.elapsed, progress.validation_seconds = run.dist.broadcast(
        [run.schedule.scale, progress.elapsed, progress.validation_seconds]
    )
    # So that no rank validates this step again alone after a skipped step.
    progress.last_validated, progress.validation_pending = progress.step, False
    return run.dist.broadcast_flag(patience_ran_out(run.cfg.train, progress))


def _validate(run: Run) -> ValidationResult | None:
    """The validation result, or None if Ctrl-C cut it short."""
    if nonfinite_tensors(run.model.state_dict()):  # a NaN model must not become best.pt
        raise UserError(_divergence(run, "the parameters are no longer finite"))
    started = time.perf_counter()
    try:
        with run.stop.abortable():
            faults.pause_point("validation")
            result = validate(run.model, run.data, run.cfg, run.dist.device, run.precision)
    except KeyboardInterrupt:
        return None
    finally:
        run.model.train()
    run.progress.validation_seconds = time.perf_counter() - started
    return result


def _commit_validation(run: Run, result: ValidationResult, rng_states: list) -> None:
    """Best and patience bookkeeping, logs, then the checkpoint (and best.pt if improved)."""
    progress = run.progress
    improved = result.bleu > progress.best_bleu
    if improved:
        progress.best_bleu, progress.best_step, progress.bad_validations = (
            result.bleu, progress.step, 0)  # fmt: skip
    else:
        progress.bad_validations += 1
    progress.last_validated, progress.validation_pending = progress.step, False
    progress.elapsed += progress.validation_seconds  # the loop's clock counts it too
    run.schedule.validated(result.bleu)
    log.info("step %d | val loss %.3f ppl %.2f | BLEU %.2f chrF %.2f | best %.2f @ %d",
             progress.step, result.loss, result.perplexity, result.bleu, result.chrf,
             progress.best_bleu, progress.best_step)  # fmt: skip
    run.tracker.validation(progress.step, result, run.model, run.data, run.dist.device)
    # History before checkpoint: a resumed run truncates the history to its checkpoint's step.
    run.run_dir.append_history(progress, result, improved)
    save(run, best=improved, rng_states=rng_states)


def average_last(run: Run) -> None:
    """`train.average_last=N`: average the last N step checkpoints, validate the average like
    any step, and make it the run's model (`averaged.pt`, which `checkpoint_file` then picks
    over best.pt) only if its BLEU beats the best step's. Averaging the end of a run smooths
    the noise of single updates and often gains BLEU, but not always: hence the validation.

    A finished run started again (same command) keeps the choice it made for these checkpoints.
    """
    if run.cfg.train.average_last < 2:  # 0 or 1: off (and [-0:] would be every checkpoint)
        return
    paths = step_checkpoints(run.run_dir.path)[-run.cfg.train.average_last :]
    steps = [int(path.stem.removeprefix("step_")) for path in paths]
    record = run.run_dir.average_record()
    chosen_exists = (run.run_dir.path / AVERAGED_NAME).is_file()
    if len(paths) < 2 or (record and record["steps"] == steps
                          and (record["chosen"] == BEST_NAME or chosen_exists)):  # fmt: skip
        return
    averaged = average_checkpoints(paths)
    run.model.load_state_dict(averaged["model"])
    result = _validate(run)
    if result is None:  # Ctrl-C: the run itself is complete and saved, its average is not
        raise Interrupted(
            f"interrupted while validating the average of the last checkpoints: the run's model "
            f"stays {BEST_NAME}; run the same command with hydra.run.dir={run.run_dir.path} to "
            "average them"
        )
    progress = run.progress
    chosen = result.bleu > progress.best_bleu
    record = {"steps": steps, "bleu": round(result.bleu, 2), "chrf": round(result.chrf, 2),
              "best_step": progress.best_step, "best_bleu": round(progress.best_bleu, 2),
              "chosen": AVERAGED_NAME if chosen else BEST_NAME}  # fmt: skip
    with run.stop.deferred():
        run.run_dir.save_average(averaged, record, chosen=chosen)
    log.info("average of steps %s: BLEU %.2f against %.2f of best.pt (step %d): the run's "
             "model is %s", ", ".join(map(str, steps)), result.bleu, progress.best_bleu,
             progress.best_step, record["chosen"])  # fmt: skip


def save_and_stop(run: Run) -> None:
    """Checkpoint the current step (rank 0) and end the run with a one-line message."""
    rng_states = run.dist.gather_to_main(rng_state())
    if run.dist.is_main:
        with run.stop.deferred():
            save(run, best=False, rng_states=rng_states)
    raise Interrupted(
        f"interrupted at step {run.progress.step}, checkpoint saved: run the same command with "
        f"hydra.run.dir={run.run_dir.path} to resume"
    )


def save(run: Run, *, best: bool, rng_states: list) -> None:
    """Write this step's checkpoint, refusing a model that is no longer finite."""
    try:
        run.run_dir.save(state_dict(run, rng_states), run.progress.step, best=best,
                         keep_last=run.cfg.train.keep_last)  # fmt: skip
    except NonFiniteParameters:
        raise UserError(_divergence(run, "the parameters are no longer finite")) from None
