"""Random-generator state for checkpoints: restoring it replays the same draws, also on a
machine with fewer GPUs than the one that saved it."""

from __future__ import annotations

import random

import pytest
import torch

from nmt.device import load_rng_state, precision_hint, rng_state


def test_a_restored_rng_state_replays_the_same_draws():
    saved = rng_state()
    draws = (torch.rand(3), random.random())
    load_rng_state(saved)
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA generators need a GPU")
def test_states_saved_on_more_gpus_than_visible_restore_those_visible():
    saved = rng_state()
    draws = torch.rand(3, device="cuda:0")
    saved["cuda"] = [*saved["cuda"], *saved["cuda"]]  # as if saved where twice as many were seen
    load_rng_state(saved)
    assert torch.equal(torch.rand(3, device="cuda:0"), draws)


@pytest.mark.parametrize("has_amx", [True, False])
def test_auto_precision_on_a_cpu_with_amx_suggests_bf16(monkeypatch, has_amx: bool):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: has_amx, raising=False)
    cpu = torch.device("cpu")
    hint = precision_hint("auto", cpu)
    assert (hint is not None) == has_amx
    assert hint is None or "train.precision=bf16" in hint
    assert precision_hint("fp32", cpu) is None  # asked for fp32: no advice
    assert precision_hint("bf16", cpu) is None
