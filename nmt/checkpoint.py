"""Checkpoint files: every state a run needs to resume or translate, in one atomic, finite file.

A checkpoint is a dict of the model, optimiser, schedule and scaler `state_dict`s, the run's
progress and statistics, RNG states, the resolved config and the SentencePiece model bytes, so
that a copied checkpoint file translates on its own. It is written to a temporary file and
renamed into place: a crash mid-write leaves the previous checkpoint intact. Parameters that are
not finite are never written. `best.pt` is a hard link to the best step's file (a copy where the
file system has no links), so it costs no second write and cannot be half-updated.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from nmt import faults
from nmt.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: progress/schedule/stats state_dicts (exact resume after Ctrl-C)
READABLE_VERSIONS = (1, 2)  # version 1 still translates; it cannot be resumed
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
BEST_NAME = "best.pt"
# The average of the last step checkpoints (`train.average_last`), present only while it is the
# run's model: it validated better than best.pt and the run has not trained on since.
AVERAGED_NAME = "averaged.pt"
# Temporary files of `save_checkpoint` and `link_best`: `.<name>.tmp-<pid>`.
TEMPORARY_GLOB = ".*.tmp-*"


class NonFiniteParameters(ValueError):
    """A model state with NaN or infinite values, refused by `save_checkpoint`."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` atomically (temporary file, fsync, rename).

    Raises `NonFiniteParameters` (writing nothing) if a floating-point tensor of
    `state["model"]` is not finite, and `UserError` naming the path when the disk is full: the
    previous checkpoint under that name is untouched either way.
    """
    bad = nonfinite_tensors(state.get("model", {}))
    if bad:
        raise NonFiniteParameters(f"not finite: {', '.join(bad[:3])}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            torch.save({"format_version": FORMAT_VERSION, **state}, faults.pausing_writer(file))
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if _disk_full(error):
            raise UserError(
                f"no space left on device while writing {path}: free some space (or lower "
                f"train.keep_last) and resume; {_intact(path)}"
            ) from None
        if isinstance(error, OSError):  # the folder vanished, became read-only, ...
            raise UserError(f"cannot write {path} ({error.strerror}): {_intact(path)}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def nonfinite_tensors(model_state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or ±inf, with one device sync in all."""
    floats = {name: value for name, value in model_state.items() if value.is_floating_point()}
    if not floats:
        return []
    finite = torch.stack([value.isfinite().all() for value in floats.values()]).tolist()
    return [name for name, ok in zip(floats, finite) if not ok]


def _disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT from Python's file writes, or torch's C++ writer's "file write failed"."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return "file write failed" in str(error) or "No space left" in str(error)


def _intact(path: Path) -> str:
    if not path.parent.is_dir():
        return "its folder is gone"
    if path.exists():
        return f"the previous {path.name} is intact"
    previous = latest_checkpoint(path.parent)
    return f"the previous checkpoint {previous} is intact" if previous else "nothing was saved"


def checkpoint_file(path: str | Path) -> Path:
    """`path` itself, or for a run directory its best checkpoint (see `best_checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        found = best_checkpoint(path)
        if found is None:
            raise UserError(f"{path} holds no checkpoint (best.pt or step_<N>.pt): train first")
        return found
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file, or the best checkpoint of a run directory (`checkpoint_file`)."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give a .pt file or a run directory")
    state = _torch_load(path, map_location=map_location)
    if not isinstance(state, dict) or state.get("format_version") not in READABLE_VERSIONS:
        raise UserError(
            f"{path} is not an nmt checkpoint of format {FORMAT_VERSION}: "
            "it was written by another program or version"
        )
    return state


def read_progress(path: Path) -> dict[str, Any]:
    """A checkpoint's `progress` dict without reading its tensors (memory-mapped load)."""
    return read_entry(path, "progress")


def read_entry(path: Path, key: str) -> dict[str, Any]:
    """One dict of a checkpoint (`progress`, `config`) without reading its tensors."""
    state = _torch_load(path, map_location="cpu", mmap=True)
    return state.get(key, {}) if isinstance(state, dict) else {}


def _torch_load(path: Path, **options: Any) -> Any:
    try:
        return torch.load(path, weights_only=True, **options)
    except Exception as error:  # a truncated or foreign file: torch raises many types
        raise UserError(
            f"{path} is not a readable nmt checkpoint ({type(error).__name__}): move it away "
            "(a run directory then uses the checkpoint before it)"
        ) from None


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The run's `step_<N>.pt` files, oldest step first."""
    found = [
        (int(m.group(1)), p) for p in run_dir.glob("step_*.pt") if (m := _STEP_FILE.match(p.name))
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = step_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def best_checkpoint(run_dir: Path) -> Path | None:
    """The run's model: `averaged.pt` where `current_average` finds one, else the checkpoint of
    the run's best step, as the latest checkpoint's progress records it.

    Normally `best.pt`. After a crash between writing `step_<N>.pt` and linking `best.pt`, the
    latest progress names a best step that `best.pt` does not hold yet: that step's own file is
    the right model, and the next start of the run repairs `best.pt` (`repair_best`).
    """
    best, latest = run_dir / BEST_NAME, latest_checkpoint(run_dir)
    if latest is None:
        return best if best.is_file() else None
    averaged = current_average(run_dir, latest)
    if averaged is not None:
        return averaged
    best_step = read_progress(latest).get("best_step", 0)
    of_best_step = run_dir / f"step_{best_step}.pt"
    if of_best_step.is_file() and not (best.is_file() and _same_file(best, of_best_step)):
        log.warning("%s is not the best step %d: using %s", best, best_step, of_best_step)
        return of_best_step
    return best if best.is_file() else latest


def current_average(run_dir: Path, latest: Path) -> Path | None:
    """`averaged.pt` if it averages up to the `latest` step checkpoint: a run resumed to train
    further has not averaged its new checkpoints yet, so its old average no longer stands."""
    averaged = run_dir / AVERAGED_NAME
    if averaged.is_file() and read_progress(averaged).get("step") == read_progress(latest)["step"]:
        return averaged
    return None


def link_best(step_path: Path) -> Path:
    """Make `best.pt` beside `step_path` the same file, atomically (link, then rename)."""
    best = step_path.with_name(BEST_NAME)
    tmp = best.with_name(f".{BEST_NAME}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(step_path, tmp)
    except OSError:  # no hard links on this file system: a copy, which needs the space
        try:
            shutil.copyfile(step_path, tmp)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            what = "no space left on device" if _disk_full(error) else error.strerror
            raise UserError(f"cannot write {best} ({what}): {step_path} is intact") from None
    os.replace(tmp, best)
    return best


def repair_best(run_dir: Path, best_step: int) -> None:
    """Point `best.pt` at `step_<best_step>.pt` if a crash left it at an older step."""
    of_best_step = run_dir / f"step_{best_step}.pt"
    best = run_dir / BEST_NAME
    if of_best_step.is_file() and not (best.is_file() and _same_file(best, of_best_step)):
        link_best(of_best_step)
        log.info("repaired %s: it now holds step %d, the best so far", best, best_step)


def _same_file(a: Path, b: Path) -> bool:
    """The same inode (a link), or, for copies, a checkpoint of the same step."""
    if os.path.samefile(a, b):
        return True
    return read_progress(a).get("step") == read_progress(b).get("step")


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (best.pt is a separate link)."""
    for path in step_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        path.unlink(missing_ok=True)


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """The last of `paths` with its model parameters replaced by the mean over all of them."""
    states = [load_checkpoint(path) for path in paths]
    averaged = states[-1]
    model = {}
    for name, value in averaged["model"].items():
        if value.is_floating_point():
            model[name] = sum(s["model"][name].double() for s in states).div(len(states))
            model[name] = model[name].to(value.dtype)
        else:
            model[name] = value
    # Optimiser, schedule and statistics belong to one point of training: an average has none.
    resumable = ("optimizer", "schedule", "scheduler", "scaler", "stats")
    kept = {k: v for k, v in averaged.items() if k not in resumable}
    return {**kept, "model": model, "averaged_from": [str(p) for p in paths]}
