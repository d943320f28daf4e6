"""A small HTTP webhook receiver (demo and tests), usable in-process or as a program.

As a program (to run inside a network namespace)::

    python tools/receiver.py webhook HOST PORT OUT.jsonl   # POST bodies -> JSON lines
    python tools/receiver.py listen HOST PORT               # accepts TCP connections, says "hi"

Each received POST is appended to OUT.jsonl as ``{"headers": {...}, "body": <json>,
"raw": <the exact body text, for signature checks>}``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        item = {
            "headers": dict(self.headers),
            "body": body,
            "received_at": time.time(),
            "raw": raw.decode("utf-8", "replace"),
        }
        status = self.server.record(item)
        self.send_response(status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        addr: tuple[str, int],
        out: Path | None,
        fail_first: int,
        hold_first: int = 0,
        answer_after_s: float = 0.0,
    ) -> None:
        super().__init__(addr, _Handler)
        self.out = out
        self.received: list[dict[str, Any]] = []
        self.held: list[dict[str, Any]] = []
        self.fail_first, self.hold_first = fail_first, hold_first
        self.answer_after_s = answer_after_s
        self.released = threading.Event()
        self.lock = threading.Lock()

    def record(self, item: dict[str, Any]) -> int:
        with self.lock:
            hold = self.hold_first > 0
            if hold:
                self.hold_first -= 1
                self.held.append(item)
        if hold:  # kept unanswered until released, then refused: never accepted
            self.released.wait(120)
            return 503
        time.sleep(self.answer_after_s)
        with self.lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return 503
            self.received.append(item)
            if self.out is not None:
                with self.out.open("a") as fh:
                    fh.write(json.dumps(item) + "\n")
        return 200


class WebhookReceiver:
    """An HTTP server on ``host`` (port chosen by the kernel) recording POSTed JSON.

    ``fail_first`` answers 503 to that many deliveries before accepting.
    ``hold_first`` keeps that many deliveries unanswered (listed in ``held``)
    until ``release()``, then answers them 503; ``answer_after_s`` delays
    every answer (a slow receiver).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        out: Path | None = None,
        fail_first: int = 0,
        hold_first: int = 0,
        answer_after_s: float = 0.0,
    ) -> None:
        self._server = _Server((host, port), out, fail_first, hold_first, answer_after_s)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every accepted POST: headers, body, raw (exact body text), received_at."""
        with self._server.lock:
            return list(self._server.received)

    @property
    def bodies(self) -> list[Any]:
        with self._server.lock:
            return [r["body"] for r in self._server.received]

    @property
    def held(self) -> list[dict[str, Any]]:
        with self._server.lock:
            return list(self._server.held)

    def release(self) -> None:
        """Answer the held deliveries (503) and hold no more."""
        self._server.released.set()

    def of(self, event: str) -> list[Any]:
        """The bodies received so far whose ``event`` field is ``event``."""
        return [b for b in self.bodies if isinstance(b, dict) and b.get("event") == event]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.released.set()
        self._server.shutdown()
        self._server.server_close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """What a receiver program has written so far: headers, body, received_at."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _listen(host: str, port: int) -> None:
    srv = socket.create_server((host, port))
    while True:
        conn, _ = srv.accept()
        conn.sendall(b"hi\n")
        conn.close()


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "listen":
        _listen(host, port)
    else:
        receiver = WebhookReceiver(host, port, Path(sys.argv[4]))
        receiver._server.serve_forever()
