"""The one exception type for user mistakes: entry points print it as a single line; and how
a command ends on Ctrl-C."""

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


def exit_interrupted() -> NoReturn:
    """End on a Ctrl-C that no command caught: one line on stderr, no traceback, status 130."""
    print("nmt: interrupted", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
