"""Pause points for the fault-injection tests: a real `nmt train` process waits at a named point
so that a test can kill or interrupt it exactly there (mid-step, mid-validation, mid-write).

Inactive unless the environment sets `NMT_PAUSE_AT=<point>:<n>[,<point>:<n>...]` (pause the
n-th time each point is reached) and `NMT_PAUSE_MARKER=<prefix>`: `<prefix>.<point>` is created
when the process waits there, and it waits until the test removes that file. The test signals
first and removes the file after: SIGKILL ends the process there; SIGINT's handler has run by
the time it goes on. (Waiting for the signal itself with `signal.pause()` would race: a signal
that lands between creating the file and pausing would leave the process paused for good.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

# Read once when the process starts: the training step calls `pause_point` every time.
_SPECS = [spec.split(":") for spec in os.environ.get("NMT_PAUSE_AT", "").split(",") if spec]
_WANTED = {name: int(count) for name, count in _SPECS}
_reached: dict[str, int] = {}


def pause_point(point: str) -> None:
    """Wait here if the environment asks this process to pause at `point` this time."""
    if point not in _WANTED:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] != _WANTED[point]:
        return
    marker = Path(f"{os.environ['NMT_PAUSE_MARKER']}.{point}")
    marker.write_text(str(os.getpid()))
    while marker.exists():
        time.sleep(0.01)


class _PausingWriter:
    """A binary file that pauses (point `checkpoint-write`) after its first write, with the
    bytes so far flushed to disk: a partial temporary checkpoint file."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.written = file, False

    def write(self, data: bytes) -> int:
        count = self.file.write(data)
        if not self.written:
            self.written = True
            self.file.flush()
            pause_point("checkpoint-write")
        return count

    def __getattr__(self, name: str):
        return getattr(self.file, name)


def pausing_writer(file: BinaryIO) -> BinaryIO:
    """`file`, wrapped to pause mid-write when a test asks for the `checkpoint-write` point."""
    if "checkpoint-write" in _WANTED:
        return _PausingWriter(file)  # type: ignore[return-value]
    return file
