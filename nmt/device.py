"""Which device and numeric precision a command runs on, and mixed precision as one context.

Training, translation and the benchmarks all resolve `device`/`precision` settings here, with or
without a distributed job around them.
"""

from __future__ import annotations

import platform
import random
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from nmt.errors import UserError


def resolve_device(setting: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is a user error."""
    if setting not in ("auto", "cpu", "cuda"):
        raise UserError(f"{key}={setting}: use auto, cpu or cuda")
    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}=cuda but PyTorch sees no CUDA device: use auto or cpu")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def describe_device(device: torch.device) -> str:
    """The device in words, for logs and results tables: the GPU's name, or the CPU's model and
    the threads PyTorch uses (a CPU run's speed depends on both)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({cpu_model()}, {threads} thread{'s' if threads > 1 else ''})"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def resolve_precision(
    setting: str, device: torch.device, key: str = "train.precision"
) -> torch.dtype:
    """fp32 on CPU by default; bf16 on CUDA where supported, else fp16 (with loss scaling)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if setting == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting not in dtypes:
        raise UserError(f"{key}={setting}: use auto, fp32, bf16 or fp16")
    if setting == "fp16" and device.type != "cuda":
        raise UserError(f"{key}=fp16 needs a CUDA device: use fp32 or bf16 on CPU")
    return dtypes[setting]


def cpu_has_amx() -> bool:
    """Whether this CPU has Intel AMX, whose tile units multiply bf16 matrices natively.

    PyTorch asks the CPU through a private helper; a build without it counts as no AMX."""
    is_supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(is_supported and is_supported())


def precision_hint(setting: str, device: torch.device) -> str | None:
    """A line for the log when `auto` chose fp32 on a CPU with AMX, where bf16 trained faster.

    `auto` stays fp32 on every CPU: bf16 is much slower on CPUs without native bf16, and its
    quality over a full-length run is not measured yet, so the user decides."""
    if setting != "auto" or device.type != "cpu" or not cpu_has_amx():
        return None
    return (
        "this CPU has AMX (native bf16): train.precision=bf16 may train faster here "
        "(README, Precision)"
    )


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """Mixed precision for bf16/fp16; nothing for fp32."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def rng_state() -> dict[str, Any]:
    """Every random generator training draws from (dropout, initialisation): for checkpoints."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def load_rng_state(state: dict[str, Any]) -> None:
    """The mirror of `rng_state`; CUDA states are restored only where CUDA is present, and only
    for the devices this machine has (a run resumed with fewer visible GPUs than it saved)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.cpu(), device=index)
    random.setstate(state["python"])
