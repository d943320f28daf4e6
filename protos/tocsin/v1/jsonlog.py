"""Log lines for both programs: ``--log-format text`` (default) and ``json``.

Contract: ``use_text_logs(program)`` replaces the root handlers' formatter:
each record becomes ``PROGRAM: message``. ``use_json_logs(program)`` makes
each record ``{"ts": RFC 3339 UTC, "level", "logger", "program", "msg"}``
plus ``"exc"`` when there is a traceback. In both, the message is passed
through ``tocsin.v1.text.printable``: whatever a process name, a path or an
agent's version holds, one record is one line, with no terminal escape and
no bidi override (a traceback keeps its own lines, after the message).
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from tocsin.v1.text import printable


class JsonFormatter(logging.Formatter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        item = {
            "ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "program": self.program,
            "msg": printable(record.getMessage()),
        }
        if record.exc_info:
            item["exc"] = self.formatException(record.exc_info)
        return json.dumps(item, ensure_ascii=False)


def use_json_logs(program: str) -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter(program))


class TextFormatter(logging.Formatter):
    """``PROGRAM: message`` with the message made printable (see module contract)."""

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.program}: {printable(record.getMessage())}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def use_text_logs(program: str) -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(TextFormatter(program))
