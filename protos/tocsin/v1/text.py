"""Text an attacker chose, made safe to print: for both programs' logs, tables and chat.

Host ids are checked on the wire, but process names, command lines, paths,
agent versions, action details and extensions are whatever the writer of a
file (or a malicious agent) made them: newlines that forge a second log line,
terminal escapes, U+202E (right-to-left override) that shows ``exe.txt`` for
``txt.exe``, zero-width characters that hide a difference.

Contract: ``printable(text, limit)`` returns one line with nothing hidden:
every character of Unicode category Cc (controls, including newline and
escape), Cf (format: the bidi overrides and isolates, zero-width joiners,
BOM), Zl and Zp (line and paragraph separators) or Cs (the lone surrogates
that ``os.fsdecode`` makes of bytes that are not UTF-8) is written as its
Python escape (``\\n``, ``\\x1b``, ``\\u202e``, ``\\udcff``); everything
else is kept as is, and so are the characters of ``keep`` (HTML, where a
newline is only whitespace, keeps ``"\t\n"``). With ``limit``, the result is
cut to at most ``limit`` characters, ending in an ellipsis. It never raises,
whatever it is given.

``wire_text(text)`` is ``text`` as valid UTF-8 for a protobuf string field
(which refuses lone surrogates with ``UnicodeEncodeError``): each byte that
was not UTF-8 becomes ``\\xNN``, so ``notes-\\xff.txt`` arrives as that
text; valid text is returned unchanged (the same object). The agent passes
every file name and process text it puts in a message through it, once.
``EscapeLogText`` is a logging filter that renders each record's message
through ``printable(wire_text(...))``, arguments included (a traceback keeps
its own lines); ``escape_log_text()`` installs it on the root handlers.
"""

from __future__ import annotations

import logging
import re
import unicodedata

_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, limit: int | None = None, keep: str = "") -> str:
    """``text`` as one visible line (see module contract); ``str()`` of non-strings first."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable() and (limit is None or len(s) <= limit):
        return s  # the common case: nothing to escape (isprintable is False for Zl, Zp, Cs, ...)
    out = "".join(
        _escape(ch) if unicodedata.category(ch) in _HIDDEN and ch not in keep else ch for ch in s
    )
    if limit is not None and len(out) > limit:
        out = out[: max(limit - 1, 0)] + "…"
    return out


_SURROGATES = re.compile("[\ud800-\udfff]")


def wire_text(text: str) -> str:
    """``text`` as valid UTF-8, undecodable bytes as ``\\xNN`` (see module contract)."""
    if not _SURROGATES.search(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoder made: its code point, escaped
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class EscapeLogText(logging.Filter):
    """A handler filter: each record's message, arguments included, made one visible line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = printable(wire_text(message))
        if safe is not message:
            record.msg, record.args = safe, None
        return True


def escape_log_text(logger: logging.Logger | None = None) -> None:
    """Install ``EscapeLogText`` on every handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(EscapeLogText())
