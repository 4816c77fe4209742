"""Ctrl-C (SIGINT) and SIGTERM as a request to stop training at the next safe point.

A signal that arrives mid-step lets the step finish: the checkpoint written next is a state the
uninterrupted run also passes through, so the resumed run is bit-identical to it. Validation
changes nothing until its result is committed, so inside `abortable()` a signal abandons it at
once and the resumed run redoes it. Inside `deferred()` (committing a validation, writing a
checkpoint) every signal waits. Outside those, a second signal stops at once without saving;
the latest checkpoint stands, and resuming from it is exact too. A signal within
`SAME_REQUEST_SECONDS` of the first counts as the same request: Ctrl-C under `torchrun` reaches
each worker twice (from the terminal, and forwarded by torchrun).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SAME_REQUEST_SECONDS = 2.0


class StopRequest:
    """Installs the handlers while entered (main thread only); `requested` says a signal came."""

    def __init__(self) -> None:
        self.requested = False
        self._first_at = 0.0  # time.monotonic() of the first signal
        self._mode = "step"  # step | abortable | deferred
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for number in _SIGNALS:
                # A signal the parent chose to ignore (SIGINT of a script's background job)
                # stays ignored, as Unix programs leave it.
                if signal.getsignal(number) is not signal.SIG_IGN:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.requested and now - self._first_at < SAME_REQUEST_SECONDS:
            return
        again, self.requested = self.requested, True
        self._first_at = self._first_at or now
        if self._mode == "deferred":
            return
        if self._mode == "abortable" or again:
            raise KeyboardInterrupt
        name = signal.Signals(number).name
        log.warning("%s: stopping after this step to save a checkpoint (again to stop at once)",
                    name)  # fmt: skip

    @contextmanager
    def _in_mode(self, mode: str) -> Iterator[None]:
        previous, self._mode = self._mode, mode
        try:
            yield
        finally:
            self._mode = previous

    @contextmanager
    def abortable(self) -> Iterator[None]:
        """A signal raises KeyboardInterrupt here at once (work that is simply redone), and so
        does one that came before: such work does not even start once a stop is asked for."""
        if self.requested:
            raise KeyboardInterrupt
        with self._in_mode("abortable"):
            yield

    def deferred(self):
        """Signals only set `requested` here (work that must complete: a checkpoint write)."""
        return self._in_mode("deferred")
