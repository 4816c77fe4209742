"""Token-budget batching: the budget holds, plans are reproducible, shards split the work."""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest
import torch

from nmt.data.batching import (
    chunks,
    collate,
    length_array,
    padded_len,
    padding_stats,
    plan_batches,
    shard,
)
from nmt.vocab import BOS_ID, EOS_ID, PAD_ID


def random_lengths(num: int, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    src = [rng.randint(1, 60) for _ in range(num)]
    return src, [max(1, s + rng.randint(-10, 10)) for s in src]


@pytest.mark.parametrize("max_tokens", [128, 1000, 4096])
def test_budget_is_never_exceeded_and_every_row_is_used(max_tokens: int):
    src, tgt = random_lengths(2000)
    batches = plan_batches(src, tgt, max_tokens, 8, seed=1, epoch=0)
    for batch in batches:
        padded_src = padded_len(max(src[i] for i in batch) + 1, 8)
        padded_tgt = padded_len(max(tgt[i] for i in batch) + 1, 8)
        assert len(batch) * (padded_src + padded_tgt) <= max_tokens
    used = sorted(i for batch in batches for i in batch)
    fits = [
        i
        for i in range(2000)
        if padded_len(src[i] + 1, 8) + padded_len(tgt[i] + 1, 8) <= max_tokens
    ]
    assert used == fits
    # a collated batch has exactly the padded sizes the plan counted
    batch = batches[0]
    collated = collate([[5] * src[i] for i in batch], [[6] * tgt[i] for i in batch], batch, 8)
    assert collated.src.numel() + collated.tgt_in.numel() <= max_tokens


def as_lists(plan: list[np.ndarray]) -> list[list[int]]:
    return [batch.tolist() for batch in plan]


def test_plan_is_a_function_of_seed_and_epoch():
    src, tgt = random_lengths(500)
    assert as_lists(plan_batches(src, tgt, 512, 8, seed=3, epoch=2)) == as_lists(
        plan_batches(src, tgt, 512, 8, seed=3, epoch=2)
    )
    assert as_lists(plan_batches(src, tgt, 512, 8, seed=3, epoch=2)) != as_lists(
        plan_batches(src, tgt, 512, 8, seed=3, epoch=3)
    )
    fixed = plan_batches(src, tgt, 512, 8)
    assert [i for b in fixed for i in b] == sorted(range(500), key=lambda i: (src[i], tgt[i], 0.0))


def test_sorting_keeps_padding_low():
    src, tgt = random_lengths(2000)
    sorted_plan = plan_batches(src, tgt, 2048, 8, seed=0)
    stats = padding_stats(sorted_plan, src, tgt, 8)
    rng = random.Random(0)
    shuffled = list(range(2000))
    rng.shuffle(shuffled)
    naive = [shuffled[i : i + len(sorted_plan[0])] for i in range(0, 2000, len(sorted_plan[0]))]
    assert stats["padding"] < 0.5 * padding_stats(naive, src, tgt, 8)["padding"]


def test_shards_are_disjoint_and_equal():
    batches = plan_batches(*random_lengths(1000), 600, 8, seed=0)
    shards = [shard(batches, rank, 3) for rank in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(batches) // 3
    flat = [tuple(b) for s in shards for b in s]
    assert len(flat) == len(set(flat))


def test_collate_adds_specials_and_pads():
    batch = collate([[7, 8, 9], [10]], [[11], [12, 13]], [4, 2], pad_multiple=1)
    assert batch.src.tolist() == [[7, 8, 9, EOS_ID], [10, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.src_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 11, PAD_ID], [BOS_ID, 12, 13]]
    assert batch.tgt_out.tolist() == [[11, EOS_ID, PAD_ID], [12, 13, EOS_ID]]
    assert batch.indices.tolist() == [4, 2] and batch.num_tgt_tokens == 5
    assert batch.to(torch.device("cpu")).src.equal(batch.src)


def reference_plan(
    src: list[int],
    tgt: list[int],
    max_tokens: int,
    pad_multiple: int,
    *,
    seed: int | None,
    epoch: int,
    max_sentences: int | None,
) -> list[list[int]]:
    """The planner written row by row in plain Python (as nmt had it before vectorising):
    fixed-seed runs must see the very same batches in the same order."""
    rng = random.Random(f"{seed}-{epoch}") if seed is not None else None
    keys = [rng.random() for _ in src] if rng else [0.0] * len(src)
    order = sorted(range(len(src)), key=lambda i: (src[i], tgt[i], keys[i]))
    batches, batch, max_src, max_tgt = [], [], 0, 0
    for index in order:
        src_len, tgt_len = (
            padded_len(src[index] + 1, pad_multiple),
            padded_len(tgt[index] + 1, pad_multiple),
        )
        if src_len + tgt_len > max_tokens:
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
    if rng:
        rng.shuffle(batches)
    return batches


@pytest.mark.parametrize("trial", range(12))
def test_vectorised_plan_equals_the_row_by_row_planner(trial: int):
    rng = random.Random(trial)
    src, tgt = random_lengths(rng.choice([0, 1, 37, 1500]), seed=trial)
    settings = {
        "max_tokens": rng.choice([40, 128, 512, 4096]), "pad_multiple": rng.choice([1, 8]),
        "seed": rng.choice([None, 0, 1234]), "epoch": rng.randint(0, 3),
        "max_sentences": rng.choice([None, 1, 7, 100]),
    }  # fmt: skip
    plan = plan_batches(np.array(src), np.array(tgt), **settings)
    expected = reference_plan(src, tgt, **settings)
    assert as_lists(plan) == expected
    if expected:
        real = sum(src[i] + tgt[i] + 2 for batch in expected for i in batch)
        padded = sum(
            len(batch) * (padded_len(max(src[i] for i in batch) + 1, settings["pad_multiple"])
                          + padded_len(max(tgt[i] for i in batch) + 1, settings["pad_multiple"]))
            for batch in expected
        )  # fmt: skip
        stats = padding_stats(plan, src, tgt, settings["pad_multiple"])
        assert stats == {"batches": len(expected), "padding": pytest.approx(1 - real / padded)}


def test_length_array_reads_a_column_as_numpy_through_an_index_mapping():
    split = datasets.Dataset.from_dict({"src_len": [4, 9, 2, 7]}).select([3, 1])
    lengths = length_array(split, "src_len")
    assert isinstance(lengths, np.ndarray) and lengths.tolist() == [7, 9]


def test_max_sentences_caps_batches():
    src, tgt = random_lengths(300)
    batches = plan_batches(src, tgt, 100_000, 8, max_sentences=7)
    assert max(len(b) for b in batches) == 7 and sum(len(b) for b in batches) == 300


def test_chunks_cut_a_stream_lazily_and_keep_the_tail():
    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == [] and list(chunks("ab", 5)) == [["a", "b"]]
    consumed = []

    def stream():
        for i in range(10):
            consumed.append(i)
            yield i

    first = next(chunks(stream(), 4))
    assert first == [0, 1, 2, 3] and consumed == [0, 1, 2, 3]  # no more read than one chunk
