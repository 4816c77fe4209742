"""Token-budget batches: length-sorted buckets, shuffled between buckets, sharded for DDP.

The order of an epoch is a pure function of (seed, epoch), so a resumed run skips to the
exact batch it stopped at, and every rank of a distributed run computes the same plan and
takes its own shard of it.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import datasets
import torch
from torch import Tensor

from nmt.vocab import BOS_ID, EOS_ID, PAD_ID

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Batch:
    """Padded tensors of one batch. Source ends in EOS; target is shifted for teacher forcing."""

    src: Tensor  # (B, S) source ids + EOS, PAD after
    src_mask: Tensor  # (B, S) True = real token
    tgt_in: Tensor  # (B, T) BOS + target ids, PAD after
    tgt_out: Tensor  # (B, T) target ids + EOS, PAD after
    indices: Tensor  # (B,) rows of the dataset split, to restore the input order

    @property
    def num_tgt_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())

    def to(self, device: torch.device) -> Batch:
        non_blocking = device.type == "cuda"  # overlaps the copy with compute from pinned memory
        tensors = (self.src, self.src_mask, self.tgt_in, self.tgt_out)
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in tensors), self.indices)


def column(split: datasets.Dataset, name: str) -> list:
    """A whole column as a list. `datasets` >= 4 returns a lazy `Column` from `split[name]`,
    whose every item access is an Arrow lookup: far too slow for sorting by length."""
    return split[name][:]


def padded_len(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple: fewer distinct shapes for compiled kernels."""
    return -(-length // multiple) * multiple


def plan_batches(
    src_lens: Sequence[int],
    tgt_lens: Sequence[int],
    max_tokens: int,
    pad_multiple: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    max_sentences: int | None = None,
) -> list[list[int]]:
    """Group row indices into batches whose padded size B·S + B·T stays within `max_tokens`.

    Lengths count the added EOS (source) and BOS/EOS (target); each is rounded up to a multiple
    of `pad_multiple` (a setting: `train.pad_multiple`, or 1 for search, which compiles
    nothing). Rows are sorted by length, with ties broken at random when `seed` is given, cut
    greedily into batches, and the batches are shuffled by (seed, epoch). With `seed=None` the
    order is sorted and fixed (validation). Rows that alone exceed the budget are left out and
    counted in a warning. `max_sentences` also caps the rows per batch.
    """
    rng = random.Random(f"{seed}-{epoch}") if seed is not None else None
    keys = [rng.random() for _ in src_lens] if rng else [0.0] * len(src_lens)
    order = sorted(range(len(src_lens)), key=lambda i: (src_lens[i], tgt_lens[i], keys[i]))
    batches: list[list[int]] = []
    batch: list[int] = []
    max_src = max_tgt = 0
    num_too_long = 0
    for index in order:
        src_len = padded_len(src_lens[index] + 1, pad_multiple)
        tgt_len = padded_len(tgt_lens[index] + 1, pad_multiple)
        if src_len + tgt_len > max_tokens:
            num_too_long += 1
            continue
        new_src, new_tgt = max(max_src, src_len), max(max_tgt, tgt_len)
        full = max_sentences is not None and len(batch) >= max_sentences
        if batch and (full or (len(batch) + 1) * (new_src + new_tgt) > max_tokens):
            batches.append(batch)
            batch, new_src, new_tgt = [], src_len, tgt_len
        batch.append(index)
        max_src, max_tgt = new_src, new_tgt
    if batch:
        batches.append(batch)
    if num_too_long:
        log.warning(
            "%d pairs are longer than train.max_tokens=%d allows and were left out: "
            "raise train.max_tokens to keep them",
            num_too_long,
            max_tokens,
        )
    if rng:
        rng.shuffle(batches)
    return batches


def shard(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """This rank's batches; every rank gets the same number, so all step together."""
    per_rank = len(batches) // world_size
    return batches[rank : per_rank * world_size : world_size]


def padding_stats(
    batches: list[list[int]], src_lens: Sequence[int], tgt_lens: Sequence[int], pad_multiple: int
) -> dict:
    """Real versus padded tokens over a plan: how much of each batch is padding."""
    real = padded = 0
    for batch in batches:
        max_src = padded_len(max(src_lens[i] for i in batch) + 1, pad_multiple)
        max_tgt = padded_len(max(tgt_lens[i] for i in batch) + 1, pad_multiple)
        real += sum(src_lens[i] + tgt_lens[i] + 2 for i in batch)
        padded += len(batch) * (max_src + max_tgt)
    return {"batches": len(batches), "padding": 1 - real / max(padded, 1)}


def collate(
    src_ids: list[list[int]], tgt_ids: list[list[int]], indices: list[int], pad_multiple: int
) -> Batch:
    """Pad one batch of id lists into a `Batch` (appends EOS to sources, BOS/EOS to targets)."""
    num = len(src_ids)
    src_len = padded_len(max(len(ids) for ids in src_ids) + 1, pad_multiple)
    tgt_len = padded_len(max(len(ids) for ids in tgt_ids) + 1, pad_multiple)
    src = torch.full((num, src_len), PAD_ID, dtype=torch.long)
    tgt_in = torch.full((num, tgt_len), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((num, tgt_len), PAD_ID, dtype=torch.long)
    for row, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        src[row, : len(s) + 1] = torch.tensor([*s, EOS_ID])
        tgt_in[row, : len(t) + 1] = torch.tensor([BOS_ID, *t])
        tgt_out[row, : len(t) + 1] = torch.tensor([*t, EOS_ID])
    return Batch(src, src != PAD_ID, tgt_in, tgt_out, torch.tensor(indices))


def iterate_batches(
    split: datasets.Dataset, batches: list[list[int]], pad_multiple: int
) -> Iterator[Batch]:
    """Fetch each planned batch's rows from the Arrow split and collate it (on the CPU)."""
    for indices in batches:
        rows = split[indices]
        yield collate(rows["src_ids"], rows["tgt_ids"], indices, pad_multiple)


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items, the last one shorter if `items` runs out first.

    Lazy, so a stream (stdin, a generator of batches) is consumed one chunk at a time: the
    translator sorts each chunk of lines by length, the trainer groups batches to accumulate.
    """
    assert size >= 1, size
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
