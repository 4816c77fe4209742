"""The one exception type for user mistakes: entry points print it as a single line; and how
a command ends on Ctrl-C."""

import contextlib
import logging
import os
import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process stopped by Ctrl-C


class UserError(ValueError):
    """Bad input or settings that the user can fix; the message names the file or key and the fix.

    Entry points catch it and print `nmt: error: <message>` without a traceback. Invariants of
    the code itself stay `assert`s or ordinary exceptions, which do show a traceback.
    """


class Interrupted(UserError):
    """Stopped by Ctrl-C or SIGTERM; the message says what was saved and how to resume. The
    command exits with 130, as a shell reports a process stopped by Ctrl-C."""


def exit_interrupted(message: str = "interrupted") -> NoReturn:
    """End on Ctrl-C (or SIGTERM): `nmt: <message>` on stderr, no traceback, status 130; the
    message of an `Interrupted`, or plain "interrupted" for a Ctrl-C no command caught.

    `os._exit`, not `sys.exit`: when the KeyboardInterrupt left an `exec(<string>)` on its
    way here (dataclasses and namedtuple build their methods so while a module imports, so a
    Ctrl-C during start-up often does), CPython run with `-m` marks it unhandled for good and
    at exit kills itself with SIGINT (status -2) whatever `sys.exit` asked for. Commands have
    cleaned up by now (`finally` blocks ran on the way here); logs and streams are flushed.
    """
    print(f"nmt: {message}", file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing reaches it
            stream.flush()
    os._exit(EXIT_INTERRUPTED)
