"""Token-budget batches: length-sorted buckets, shuffled between buckets, sharded for DDP.

The order of an epoch is a pure function of (seed, epoch), so a resumed run skips to the
exact batch it stopped at, and every rank of a distributed run computes the same plan and
takes its own shard of it.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import datasets
import numpy as np
import torch
from numpy.typing import ArrayLike
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


def length_array(split: datasets.Dataset, name: str) -> np.ndarray:
    """A length column (`src_len`, `tgt_len`) as one NumPy array read straight from Arrow.

    8 bytes a sentence, where a Python list costs 8 bytes plus an int object each; this is
    what lets a 10M-pair corpus plan its batches without gigabytes of Python objects.
    """
    return np.asarray(split.with_format("numpy")[name][:], dtype=np.int64)


def padded_len(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple: fewer distinct shapes for compiled kernels."""
    return -(-length // multiple) * multiple


def plan_batches(
    src_lens: ArrayLike,
    tgt_lens: ArrayLike,
    max_tokens: int,
    pad_multiple: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    max_sentences: int | None = None,
) -> list[np.ndarray]:
    """Group row indices into batches whose padded size B·S + B·T stays within `max_tokens`.

    Lengths count the added EOS (source) and BOS/EOS (target); each is rounded up to a multiple
    of `pad_multiple` (a setting: `train.pad_multiple`, or 1 for search, which compiles
    nothing). Rows are sorted by length, with ties broken at random when `seed` is given, cut
    greedily into batches, and the batches are shuffled by (seed, epoch). With `seed=None` the
    order is sorted and fixed (validation). Rows that alone exceed the budget are left out and
    counted in a warning. `max_sentences` also caps the rows per batch. Each batch is an int64
    array of row indices; sorting and cutting are vectorised, so 10M rows take seconds.
    """
    src_lens = np.asarray(src_lens, dtype=np.int64)
    tgt_lens = np.asarray(tgt_lens, dtype=np.int64)
    rng = random.Random(f"{seed}-{epoch}") if seed is not None else None
    order = _length_order(src_lens, tgt_lens, _random_keys(rng, len(src_lens)) if rng else None)
    src_padded = _padded(src_lens[order] + 1, pad_multiple)
    tgt_padded = _padded(tgt_lens[order] + 1, pad_multiple)
    fits = src_padded + tgt_padded <= max_tokens
    num_too_long = len(order) - int(fits.sum())
    order, src_padded, tgt_padded = order[fits], src_padded[fits], tgt_padded[fits]
    ends = _batch_ends(src_padded, tgt_padded, max_tokens, max_sentences)
    batches = np.split(order, ends[:-1]) if len(order) else []
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


def _padded(lengths: np.ndarray, multiple: int) -> np.ndarray:
    return -(-lengths // multiple) * multiple


def _length_order(
    src_lens: np.ndarray, tgt_lens: np.ndarray, tie_keys: np.ndarray | None
) -> np.ndarray:
    """Rows sorted by (source length, target length, tie key), equal keys in row order.

    The same order as `np.lexsort((tie_keys, tgt_lens, src_lens))`, in two stable sorts
    (tie keys, then one integer per length pair), which is about twice as fast.
    """
    rows = np.arange(len(src_lens)) if tie_keys is None else np.argsort(tie_keys, kind="stable")
    if len(rows) == 0:
        return rows
    pair = src_lens[rows] * (int(tgt_lens.max()) + 1) + tgt_lens[rows]
    return rows[np.argsort(pair.astype(np.min_scalar_type(int(pair.max()))), kind="stable")]


def _random_keys(rng: random.Random, num: int) -> np.ndarray:
    """`[rng.random() for _ in range(num)]` as an array, leaving `rng` advanced past them.

    Python's `random` and NumPy's MT19937 share the generator and the 53-bit double recipe,
    so NumPy continues from `rng`'s state and draws the very same numbers, without a Python
    float per row; plans stay identical to those of the earlier, list-based planner.
    """
    version, state, gauss_next = rng.getstate()
    generator = np.random.MT19937()
    key, pos = np.array(state[:-1], dtype=np.uint32), state[-1]
    generator.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}
    keys = np.random.Generator(generator).random(num)
    after = generator.state["state"]
    rng.setstate((version, (*after["key"].tolist(), int(after["pos"])), gauss_next))
    return keys


def _batch_ends(
    src_padded: np.ndarray, tgt_padded: np.ndarray, max_tokens: int, max_sentences: int | None
) -> list[int]:
    """End positions of greedy batches over length-sorted rows, each row fitting alone.

    A batch grows while (rows + 1) · (max source + max target) stays within the budget. That
    cost never falls as rows are added, so the rows that fit are found by one binary search
    over running maxima of a window, which doubles whenever the batch may continue past it.
    """
    ends: list[int] = []
    start, num, window = 0, len(src_padded), 64
    limit = max_sentences or num
    while start < num:
        while True:
            stop = min(num, start + window)
            sizes = np.arange(1, stop - start + 1)
            widths = np.maximum.accumulate(src_padded[start:stop]) + np.maximum.accumulate(
                tgt_padded[start:stop]
            )
            count = int(np.searchsorted(sizes * widths, max_tokens, side="right"))
            if count < stop - start or stop == num or count >= limit:
                break
            window *= 2
        start += min(count, limit)
        ends.append(start)
        window = max(64, 2 * count)
    return ends


def shard(batches: list[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's batches; every rank gets the same number, so all step together."""
    per_rank = len(batches) // world_size
    return batches[rank : per_rank * world_size : world_size]


def padding_stats(
    batches: list[np.ndarray], src_lens: ArrayLike, tgt_lens: ArrayLike, pad_multiple: int
) -> dict:
    """Real versus padded tokens over a plan: how much of each batch is padding."""
    if not batches:
        return {"batches": 0, "padding": 0.0}
    rows = np.concatenate(batches)
    starts = np.cumsum([0, *(len(batch) for batch in batches[:-1])])
    src, tgt = np.asarray(src_lens)[rows], np.asarray(tgt_lens)[rows]
    max_src = _padded(np.maximum.reduceat(src, starts) + 1, pad_multiple)
    max_tgt = _padded(np.maximum.reduceat(tgt, starts) + 1, pad_multiple)
    real = int(src.sum() + tgt.sum()) + 2 * len(rows)
    padded = int(np.diff([*starts, len(rows)]) @ (max_src + max_tgt))
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
    split: datasets.Dataset, batches: list[np.ndarray], pad_multiple: int
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
