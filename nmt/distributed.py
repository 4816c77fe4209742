"""The process's device and precision, its place in a `torchrun` job, and the collectives we use."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from nmt.errors import UserError

T = TypeVar("T")


def resolve_device(setting: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is a user error."""
    if setting not in ("auto", "cpu", "cuda"):
        raise UserError(f"{key}={setting}: use auto, cpu or cuda")
    if setting == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}=cuda but PyTorch sees no CUDA device: use auto or cpu")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


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


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """Mixed precision for bf16/fp16; nothing for fp32."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


@dataclass
class Distributed:
    """Rank, world size and device; NCCL between GPUs, gloo between CPU processes."""

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def from_env(cls, device_setting: str) -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_setting, local_rank)
        if world_size > 1 and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            # TF32 tensor cores for fp32 matrix products on Ampere and newer.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        rank = dist.get_rank() if world_size > 1 else 0
        return cls(rank, world_size, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def rank_zero_first(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0, then on the others (e.g. build a cache once, then read it)."""
        if not self.is_main:
            self.barrier()
        result = fn()
        if self.is_main:
            self.barrier()
        return result

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's `values` on every rank (float64, so seconds and rates survive exactly)."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's value of `flag` on every rank."""
        return bool(self.broadcast([float(flag)])[0])

    def broadcast_lr(self, optimizer: torch.optim.Optimizer) -> None:
        """Rank 0's learning rates on every rank (a plateau schedule steps on rank 0 only)."""
        rates = self.broadcast([group["lr"] for group in optimizer.param_groups])
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
