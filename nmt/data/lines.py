"""Read UTF-8 text line by line, the way a parallel corpus needs it read.

Only `\\n` ends a line: `str.splitlines` would also split on U+2028, a form feed and friends,
and a corpus line must stay one record so that both sides of a pair stay aligned and line
numbers match an editor's. A bad byte is reported with its file and line (or replaced and
counted, if the caller asks). The corpus loader reads its local files with `read_lines`, and
translation reads its input, stdin included, with it too.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nmt.errors import UserError

UTF8_BOM = b"\xef\xbb\xbf"  # the byte-order mark some editors put before the first line


@dataclass
class Replacements:
    """Lines in which `read_lines` replaced undecodable bytes with U+FFFD, counted for a warning."""

    num_lines: int = 0
    first_line: int | None = None  # line number of the first such line


def read_lines(
    source: str | Path | BinaryIO,
    name: str | None = None,
    *,
    fix: str = "save it as UTF-8",
    replacements: Replacements | None = None,
) -> Iterator[str]:
    """Yield the lines of UTF-8 text without their line end (`\\n` or `\\r\\n`), and without
    the byte-order mark some editors put before the first.

    `source` is a file, decompressed if its name ends in `.gz`, or a binary stream such as
    `sys.stdin.buffer` (left open). Only `\\n` ends a line: a corpus line is one record even if
    it holds U+2028 or a form feed, so both sides of a pair stay aligned and line numbers match
    an editor's. Undecodable bytes raise a `UserError` naming `name:line` and ending in `fix`;
    with `replacements` given they become U+FFFD instead, and the lines are counted there.
    A gzip file that is not gzip, truncated or corrupt is a `UserError` too.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as stream:
            yield from _decoded_lines(stream, name or str(path), fix, replacements)
    else:
        yield from _decoded_lines(source, name or "<stream>", fix, replacements)


def _decoded_lines(
    stream: BinaryIO, name: str, fix: str, replacements: Replacements | None
) -> Iterator[str]:
    line_no = 0
    try:
        for line_no, raw in enumerate(stream, start=1):
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            if line_no == 1 and raw.startswith(UTF8_BOM):  # a Windows editor's mark, not text
                raw = raw[len(UTF8_BOM) :]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                if replacements is None:
                    raise UserError(
                        f"{name}:{line_no}: invalid UTF-8 byte 0x{raw[error.start]:02x} at "
                        f"column {error.start + 1}: {fix}"
                    ) from None
                replacements.num_lines += 1
                replacements.first_line = replacements.first_line or line_no
                yield raw.decode("utf-8", errors="replace")
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        # gzip notices a damaged file only when reading reaches the damage.
        if line_no == 0 and "Not a gzipped file" in str(error):
            problem = "is not gzip-compressed although its name ends in .gz"
        elif isinstance(error, EOFError):
            problem = f"is truncated: its gzip stream ends after line {line_no}"
        else:
            problem = f"has corrupt gzip data after line {line_no} ({error})"
        raise UserError(f"{name} {problem}: fetch or compress the file again") from None
