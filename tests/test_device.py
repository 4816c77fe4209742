"""Random-generator state for checkpoints: restoring it replays the same draws, also on a
machine with fewer GPUs than the one that saved it."""

from __future__ import annotations

import random

import pytest
import torch

from nmt.device import load_rng_state, rng_state


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
