"""The console progress: how long the run will take, said once its first steps set the pace."""

from __future__ import annotations

import logging

import pytest

from nmt import tracking
from nmt.tracking import ConsoleProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(tracking.time, "perf_counter", fake)
    return fake


def run_steps(console: ConsoleProgress, clock: Clock, steps: range, seconds_each: float) -> None:
    for step in steps:
        clock.now += seconds_each
        console.update(step, elapsed=clock.now - 1000.0, loss=1.0, tokens_per_s=1.0, lr=1e-3)


def estimates(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimate:")]


def test_the_run_length_is_estimated_once_from_the_first_steps(clock: Clock, caplog):
    caplog.set_level(logging.INFO, logger="nmt.tracking")
    console = ConsoleProgress(total_steps=10_000, step=0, time_budget=None)
    run_steps(console, clock, range(1, 20), seconds_each=0.5)  # 19 steps: too few to tell
    assert estimates(caplog) == []
    run_steps(console, clock, range(20, 100), seconds_each=0.5)
    # 20 steps in 10 s: 2 steps/s, so 9,980 steps are 4,990 s.
    assert estimates(caplog) == [
        "estimate: 1:23:10 of training for 9,980 more steps at the measured 2.00 steps/s, "
        "validation not included"
    ]


@pytest.mark.parametrize(
    ("total_steps", "seconds_each", "expected"),
    [
        # 9,980 more steps would take 9,980 s: the 600-s time budget ends first.
        (10_000, 1.0, "9:40 of training until train.max_time at the measured 1.00 steps/s"),
        # 100 more steps take 50 s: well inside the time budget.
        (120, 0.5, "0:50 of training for 100 more steps at the measured 2.00 steps/s"),
    ],
)
def test_the_estimate_names_the_budget_that_ends_first(
    clock: Clock, caplog, total_steps: int, seconds_each: float, expected: str
):
    caplog.set_level(logging.INFO, logger="nmt.tracking")
    console = ConsoleProgress(total_steps=total_steps, step=0, time_budget=600.0)
    run_steps(console, clock, range(1, 21), seconds_each=seconds_each)
    assert estimates(caplog) == [f"estimate: {expected}, validation not included"]
