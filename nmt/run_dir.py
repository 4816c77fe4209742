"""A training run's directory: one training at a time, what a crash leaves behind, the
validation history, and which settings a resumed run may change.

A run directory holds `step_<N>.pt` checkpoints, `best.pt`, `validations.jsonl`, `config.yaml`,
`train.log` and `tensorboard/`. Its lock (an `flock` on `.lock`) is released by the kernel when
the process ends however it ends, so a lock left by a killed training is simply taken over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from nmt import checkpoint
from nmt.config import Config, from_dict
from nmt.errors import UserError
from nmt.evaluate import ValidationResult
from nmt.progress import Progress

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# One JSON line per validation: the learning curve against wall time, which
# `scripts/time_to_quality.py` reads.
HISTORY_NAME = "validations.jsonl"
# What the end-of-run checkpoint average (`train.average_last`) scored, and which model it chose.
AVERAGE_NAME = "average.json"
# Settings a resumed run may change (applied and logged): everything except what fixes the
# model, the vocabulary, the data, or the data order the saved position counts batches of.
_DATA_KEYS_THAT_MAY_CHANGE = ("data.root", "data.cache_dir", "data.num_proc")
_TRAIN_KEYS_FIXED = ("train.seed", "train.max_tokens", "train.accumulate", "train.pad_multiple")


class RunDir:
    """The directory of one training run (`path`), used by rank 0 only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def lock(self, enabled: bool = True) -> Iterator[None]:
        """Hold the directory for this process; refuse if another live training holds it."""
        if not enabled:
            yield
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserError(
                f"cannot write to the run directory {self.path} ({error.strerror}): make it "
                "writable or choose another hydra.run.dir"
            ) from None
        holder = os.read(fd, 512).decode("utf-8", "replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"run directory {self.path} is in use by {holder or 'another process'}: wait "
                "for that training to end or stop it, or train in another hydra.run.dir"
            ) from None
        if holder:
            log.info("took over %s from %s, which is no longer running", self.path, holder)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"nmt train, process {os.getpid()} on {socket.gethostname()} "
                      f"(started {started})".encode(), 0)  # fmt: skip
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves nothing to take over
            os.close(fd)

    def latest_state(
        self, cfg: Config, *, map_location: torch.device, is_main: bool
    ) -> dict[str, Any] | None:
        """The latest checkpoint to resume from, if any (and `train.resume`), its settings
        checked against `cfg` (`resume_changes`; rank 0 logs what changes)."""
        latest = checkpoint.latest_checkpoint(self.path)
        if latest is not None and not cfg.train.resume:  # starting over here would mix two runs
            raise UserError(
                f"train.resume=false, but {self.path} holds checkpoints (latest {latest.name}): "
                "start over in another hydra.run.dir, or delete them first"
            )
        if latest is None:
            return None
        state = checkpoint.load_checkpoint(latest, map_location=map_location)
        if "schedule" not in state:
            raise UserError(
                f"{latest} was written by an older nmt and cannot be resumed: translate "
                "with it, or train in another hydra.run.dir"
            )
        changes = resume_changes(from_dict(state["config"]), cfg, self.path)
        step = state["progress"]["step"]
        for line in [f"resuming from {latest} at step {step}", *changes] if is_main else []:
            log.info("%s", line)
        return state

    def save(self, state: dict[str, Any], step: int, *, best: bool, keep_last: int) -> Path:
        """Write `step_<step>.pt`, make it `best.pt` if `best` (after the step file: a crash
        between the two leaves a best.pt that `tidy` repairs), keep the last `keep_last`."""
        if not self.path.is_dir():  # deleted mid-run: do not quietly make a new one
            raise UserError(f"the run directory {self.path} vanished: step {step} not saved")
        path = self.path / f"step_{step}.pt"
        checkpoint.save_checkpoint(state, path)
        if best:
            checkpoint.link_best(path)
        checkpoint.prune_checkpoints(self.path, keep_last)
        return path

    def average_record(self) -> dict[str, Any] | None:
        """The latest `save_average` record, or None if the run never averaged."""
        path = self.path / AVERAGE_NAME
        with contextlib.suppress(OSError, json.JSONDecodeError):
            return json.loads(path.read_text(encoding="utf-8"))
        return None

    def save_average(self, state: dict[str, Any], record: dict[str, Any], *, chosen: bool) -> None:
        """Keep the averaged checkpoint `state` as `averaged.pt` if it is `chosen` as the run's
        model (and remove an older one if not), then write `record` as `average.json`."""
        averaged = self.path / checkpoint.AVERAGED_NAME
        if chosen:
            checkpoint.save_checkpoint(state, averaged)
        else:
            averaged.unlink(missing_ok=True)
        tmp = self.path / f".{AVERAGE_NAME}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path / AVERAGE_NAME)

    def tidy(self, progress: Progress, cfg: Config) -> None:
        """Make the directory agree with the checkpoint a run starts from: remove partial
        checkpoint writes of a killed process (under the lock no one else writes them), drop
        validations the run will redo, point best.pt at the best step, record the config."""
        for path in self.path.glob(checkpoint.TEMPORARY_GLOB):
            path.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted checkpoint write", path.name)
        self.truncate_history(progress.last_validated)
        checkpoint.repair_best(self.path, progress.best_step)
        (self.path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))

    def append_history(self, progress: Progress, result: ValidationResult, improved: bool) -> None:
        """One validation's line: step, BLEU and when its checkpoint was written, in seconds
        since the first step and since the command started (data preparation included)."""
        record = {
            "step": progress.step,
            "epoch": progress.epoch,
            "train_seconds": round(progress.elapsed, 2),
            "since_launch_seconds": round(progress.setup_seconds + progress.elapsed, 2),
            "validation_seconds": round(progress.validation_seconds, 2),
            "loss": round(result.loss, 4),
            "bleu": round(result.bleu, 2),
            "chrf": round(result.chrf, 2),
            "best": improved,
        }
        with open(self.path / HISTORY_NAME, "a", encoding="utf-8") as history:
            history.write(json.dumps(record) + "\n")

    def truncate_history(self, last_validated: int) -> None:
        """Keep the validations up to the resumed checkpoint's: later ones (and a line cut off
        by a crash) are redone by the resumed run, so they must not appear twice."""
        path = self.path / HISTORY_NAME
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line)["step"] <= last_validated:
                    kept.append(line + "\n")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)


def resume_changes(saved: Config, new: Config, run_dir: Path) -> list[str]:
    """The settings that differ from the checkpoint's, as `key: old -> new` lines.

    Settings that fix the model, vocabulary, data or data order stop the run with one line;
    the others (learning rate and schedule, limits, validation cadence, patience, decoding...)
    are returned for the log and take effect from the resumed step.
    """
    old, now = _flatten(dataclasses.asdict(saved)), _flatten(dataclasses.asdict(new))
    changed = [key for key in now if key in old and old[key] != now[key] and _trains(key)]
    fixed = [key for key in changed if _fixed(key)]
    if fixed:
        listed = ", ".join(f"{key} ({old[key]!r} -> {now[key]!r})" for key in fixed)
        raise UserError(
            f"{run_dir} was trained with other settings that cannot change on resume: {listed}; "
            "resume with the original values, or start a new run in another hydra.run.dir"
        )
    return [f"changed {key}: {old[key]!r} -> {now[key]!r}" for key in changed]


def _trains(key: str) -> bool:
    """Whether the key matters to training (not the name, nor translate/evaluate settings)."""
    return key.startswith(("data.", "model.", "train.", "decode."))


def _fixed(key: str) -> bool:
    if key.startswith("data."):
        return key not in _DATA_KEYS_THAT_MAY_CHANGE
    return key.startswith("model.") or key in _TRAIN_KEYS_FIXED


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
