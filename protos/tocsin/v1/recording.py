"""Recorded telemetry: JSON lines of ``AgentMessage`` in the protobuf JSON mapping.

A recording is what an agent sent, one message per line, in order, starting
with its ``hello``. Replaying it into a collector must give the same alerts as
the live stream did; the collector judges by the windows' own timestamps, never
by the wall clock at replay time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from google.protobuf import json_format

from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.errors import WireError


def message_to_line(msg: pb.AgentMessage) -> str:
    """One JSON line (no newline) for ``msg``."""
    return json_format.MessageToJson(msg, indent=None, preserving_proto_field_name=True)


def line_to_message(line: str) -> pb.AgentMessage:
    """Parse one recorded line; raises ``WireError`` naming what is wrong."""
    msg = pb.AgentMessage()
    try:
        json_format.Parse(line, msg)
    except json_format.ParseError as exc:
        raise WireError(f"not a tocsin.v1.AgentMessage: {exc}") from exc
    return msg


def read_recording(path: Path) -> Iterator[pb.AgentMessage]:
    """Yield the messages of a recording; ``WireError`` names the bad line."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield line_to_message(line)
            except WireError as exc:
                raise WireError(f"{path}:{lineno}: {exc}") from None


class Recorder:
    """Appends sent messages to a JSON-lines file; thread-safe, flushed per line."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, msg: pb.AgentMessage) -> None:
        line = message_to_line(msg)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
