"""Ctrl-C as a stop request: once to stop after the step, again to stop at once, never inside
a checkpoint write, at once inside a validation."""

from __future__ import annotations

import signal

import pytest

from nmt import signals
from nmt.signals import StopRequest


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(signals.time, "monotonic", lambda: now[0])
    return now


def test_first_signal_requests_a_stop_and_a_later_one_stops_at_once(clock):
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        clock[0] += 1.0  # the terminal's and torchrun's copies of one Ctrl-C
        signal.raise_signal(signal.SIGINT)
        clock[0] += 5.0
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)


def test_a_validation_is_abandoned_and_a_checkpoint_write_is_not(clock):
    with StopRequest() as stop:
        with stop.abortable(), pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert stop.requested
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGINT)  # during a step: stop after it
        started = []
        with pytest.raises(KeyboardInterrupt), stop.abortable():
            started.append(True)  # a validation asked for after the signal never starts
        assert not started
    with StopRequest() as stop, stop.deferred():
        for _ in range(3):
            clock[0] += 10.0
            signal.raise_signal(signal.SIGINT)  # waits for the write to finish
        assert stop.requested


def test_the_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest():
        assert signal.getsignal(signal.SIGINT) != before
    assert signal.getsignal(signal.SIGINT) == before


def test_a_signal_the_parent_ignored_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's background job
    try:
        with StopRequest() as stop:
            signal.raise_signal(signal.SIGINT)
            assert not stop.requested
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # still handled
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
