"""The process's place in a `torchrun` job and the collectives training uses."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from nmt.device import resolve_device

T = TypeVar("T")


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
            # Other ranks wait in collectives while rank 0 alone prepares the data (a first
            # large corpus takes more than NCCL's default 10 minutes) or validates.
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(hours=2))  # fmt: skip
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

    def sum(self, value: int) -> int:
        """The sum of every rank's `value` (exact for counts below 2**53)."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return int(tensor.item())

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any: a Ctrl-C that one rank sees first stops
        all of them after the same step."""
        if self.world_size == 1:
            return flag
        tensor = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def gather_to_main(self, value: T) -> list[T] | None:
        """Every rank's `value` in rank order on rank 0, None on the others."""
        if self.world_size == 1:
            return [value]
        values: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, values, dst=0)
        return values

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
