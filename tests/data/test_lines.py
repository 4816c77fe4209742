"""The UTF-8 line reader: what ends a line, how a bad byte is named or replaced."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from nmt.data.lines import Replacements, read_lines
from nmt.errors import UserError


def test_read_lines_of_a_stream_splits_on_newline_only():
    stream = io.BytesIO("one\r\ntwo\x0cthree\u2028\nfour\rfive\n\nlast".encode())
    assert list(read_lines(stream, "<stdin>")) == [
        "one",
        "two\x0cthree\u2028",
        "four\rfive",  # a lone CR is not a line end
        "",
        "last",
    ]
    with_bom = io.BytesIO("\ufeffEin Hund\n\ufeffzwei\n".encode())
    assert list(read_lines(with_bom, "<stdin>")) == ["Ein Hund", "\ufeffzwei"]  # line 1 only


def test_read_lines_names_the_line_and_the_callers_fix():
    stream = io.BytesIO(b"fine\nbad \xff byte\n")
    with pytest.raises(UserError) as error:
        list(read_lines(stream, "<stdin>", fix="fix the line, or set x.strict=false"))
    assert str(error.value) == (
        "<stdin>:2: invalid UTF-8 byte 0xff at column 5: fix the line, or set x.strict=false"
    )


def test_read_lines_replaces_and_counts_when_asked(tmp_path: Path):
    path = tmp_path / "input.gz"
    with gzip.open(path, "wb") as file:
        file.write(b"ok\ncaf\xe9\nok\n\xff\xfe\n")
    replaced = Replacements()
    assert list(read_lines(path, replacements=replaced)) == [
        "ok",
        "caf\ufffd",
        "ok",
        "\ufffd\ufffd",
    ]
    assert (replaced.num_lines, replaced.first_line) == (2, 2)
