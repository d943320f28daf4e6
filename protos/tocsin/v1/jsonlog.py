"""``--log-format json``: one JSON object per log line (journald, Loki, ELK), for both programs.

Contract: ``use_json_logs(program)`` replaces the root handlers' formatter:
each record becomes ``{"ts": RFC 3339 UTC, "level", "logger", "program",
"msg"}`` plus ``"exc"`` when there is a traceback. Nothing else changes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging


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
            "msg": record.getMessage(),
        }
        if record.exc_info:
            item["exc"] = self.formatException(record.exc_info)
        return json.dumps(item, ensure_ascii=False)


def use_json_logs(program: str) -> None:
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter(program))
