"""Outside text made safe once: valid UTF-8 for the wire, one printable line for the logs."""

from __future__ import annotations

import io
import logging
import os

from hypothesis import given
from hypothesis import strategies as st

from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.text import EscapeLogText, printable, wire_text


def test_undecodable_bytes_become_backslash_escapes() -> None:
    name = os.fsdecode(b"/share/notes-\xff\xfe.txt")
    assert wire_text(name) == "/share/notes-\\xff\\xfe.txt"
    assert wire_text("/share/r\u00e9sum\u00e9.txt") == "/share/r\u00e9sum\u00e9.txt"
    assert wire_text("lone \ud800 surrogate") == "lone \\ud800 surrogate"


@given(st.binary(max_size=200))
def test_any_file_name_fits_in_a_protobuf(raw: bytes) -> None:
    name = os.fsdecode(raw)
    w = pb.Window(example_paths=[wire_text(name)], repeated_name=wire_text(name))
    assert pb.Window.FromString(w.SerializeToString()).repeated_name == wire_text(name)
    try:
        assert wire_text(name) == raw.decode("utf-8")  # valid text goes through unchanged
    except UnicodeDecodeError:
        assert "\\x" in wire_text(name)


def test_log_text_is_one_printable_line() -> None:
    evil = os.fsdecode(b"a\nFAKE 2026 ERROR\r\x1b[31m\xff \xe2\x80\xae") + "\u200b"
    safe = printable(wire_text(evil))
    assert safe == "a\\nFAKE 2026 ERROR\\r\\x1b[31m\\xff \\u202e\\u200b"
    assert safe.isprintable()
    plain = "plain, accents: \u00e9t\u00e9"
    assert printable(wire_text(plain)) is plain


def test_the_log_filter_escapes_arguments_and_keeps_tracebacks() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(EscapeLogText())
    logger = logging.getLogger("tocsin.test.escape")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("probe of %s by %s", "x\n\u202etxt.exe", os.fsdecode(b"\xff"))
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed %d", 3)
    finally:
        logger.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert lines[0] == "probe of x\\n\\u202etxt.exe by \\xff"
    assert lines[1] == "failed 3" and lines[2].startswith("Traceback")
