"""Text from the outside world made safe for the wire and for log lines, for both programs.

File names and command lines are bytes on Linux; Python hands them over as
``str`` with each undecodable byte as a lone surrogate (``os.fsdecode``,
psutil). protobuf refuses such a string (``UnicodeEncodeError``), and a raw
newline or U+202E in a log line lets whoever named a file forge or hide lines.

Contract: ``wire_text(s)`` is valid UTF-8 text: every undecodable byte
becomes ``\\xNN`` (backslash-escaped), everything else is unchanged, so it is
the identity on valid text. ``log_text(s)`` is ``wire_text(s)`` with control
characters (C0, C1, DEL), line and paragraph separators and invisible format
characters (bidi overrides such as U+202E, zero-width) escaped as ``\\n``,
``\\x1b``, ``\\u202e``: one printable line. ``EscapeLogText`` is a logging
filter that renders each record's message through ``log_text`` (installed on
the handlers by each program's entry point); tracebacks are left as they are.
"""

from __future__ import annotations

import logging
import re
import unicodedata

_SURROGATES = re.compile("[\ud800-\udfff]")
# Cc (controls), Cf (format: bidi overrides, zero-width), Zl, Zp, and surrogates (Cs).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def wire_text(s: str) -> str:
    """``s`` as valid UTF-8 text, undecodable bytes as ``\\xNN`` (see module contract)."""
    if not _SURROGATES.search(s):
        return s
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoder made: escape it as a code point
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def log_text(s: str) -> str:
    """``s`` as one printable log line (see module contract)."""
    s = wire_text(s)
    if s.isprintable():
        return s
    return "".join(
        _escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in s
    )


class EscapeLogText(logging.Filter):
    """A handler filter: each record's message, arguments included, through ``log_text``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = log_text(message)
        if safe is not message:
            record.msg, record.args = safe, None
        return True


def escape_log_text(logger: logging.Logger | None = None) -> None:
    """Install ``EscapeLogText`` on every handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(EscapeLogText())
