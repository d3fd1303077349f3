"""JSON files of a model folder: every failure is a FormatError naming the file (exit 2), never an internal error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modeltrace.artifacts.files import read_bytes, read_json
from modeltrace.errors import FormatError
from modeltrace.model import load_json


@pytest.mark.parametrize(("content", "message"), [
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
    ('{"n": 1' + "0" * 5000 + "}", ("JSON holds a number too long to read (Exceeds the limit (4300 digits) for "
                                  "integer string conversion: value has 5001 digits; use "
                                  "sys.set_int_max_str_digits() to increase the limit)")),
    (b"\xff\xfe{}", "not UTF-8 text"),
    ('{"a": 1,', "invalid JSON at line 1 column 9: Expecting property name enclosed in double quotes"),
])
def test_bad_json_is_a_format_error(tmp_path: Path, content: str | bytes, message: str) -> None:
    p = tmp_path / "config.json"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    for load in (load_json, read_json):
        with pytest.raises(FormatError) as err:
            load(p)
        assert str(err.value) == f"{p}: {message}"


def test_unreadable_json_is_a_format_error(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.mkdir()
    with pytest.raises(FormatError) as err:
        load_json(p)
    assert str(err.value) == f"{p}: cannot read: Is a directory"


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    p = tmp_path / "vocab.txt"
    os.mkfifo(p)
    with pytest.raises(FormatError) as err:
        read_bytes(p)  # opening a FIFO for reading would block for ever
    assert str(err.value) == f"{p}: not a regular file"
    with pytest.raises(FormatError) as err:
        load_json(p)
    assert str(err.value) == f"{p}: not a regular file"
