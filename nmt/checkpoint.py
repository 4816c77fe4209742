"""Atomic checkpoint files: every state a run needs to resume or translate, in one file.

A checkpoint is a dict holding the model, optimiser, scheduler and scaler `state_dict`s, the
step, epoch and position in the data order, RNG states, the resolved config and the
SentencePiece model bytes, so that a copied checkpoint file translates on its own. It is
written to a temporary file and renamed into place: a crash mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from nmt.errors import UserError

FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
BEST_NAME = "best.pt"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            torch.save({"format_version": FORMAT_VERSION, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file, or the best (else latest) checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        found = path / BEST_NAME if (path / BEST_NAME).is_file() else latest_checkpoint(path)
        if found is None:
            raise UserError(f"{path} holds no checkpoint (best.pt or step_<N>.pt): train first")
        path = found
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give a .pt file or a run directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated or foreign file: torch raises many types
        raise UserError(
            f"{path} is not a readable nmt checkpoint ({type(error).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path} is not an nmt checkpoint of format {FORMAT_VERSION}: "
            "it was written by another program or version"
        )
    return state


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The run's `step_<N>.pt` files, oldest step first."""
    found = [
        (int(m.group(1)), p) for p in run_dir.glob("step_*.pt") if (m := _STEP_FILE.match(p.name))
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = step_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (best.pt is a separate file)."""
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
    # Optimiser and scheduler states belong to one point of training: an average has none.
    kept = {k: v for k, v in averaged.items() if k not in ("optimizer", "scheduler", "scaler")}
    return {**kept, "model": model, "averaged_from": [str(p) for p in paths]}
