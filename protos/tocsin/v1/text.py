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
"""

from __future__ import annotations

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
