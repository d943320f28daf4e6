"""Several webhook deliverers (collector workers) on one database: each event sent once.

Real deliverer processes (tests/outbox_deliverer.py) on one SQLite file or one
PostgreSQL database (tests/pgserver.py), a real HTTP receiver; an event counts
as delivered when the receiver accepted it (2xx), by its webhook-id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver import WebhookReceiver
from tocsin.collector.backends import open_database
from tocsin.collector.db import SqlDatabase
from tocsin.collector.outbox import Outbox, destination

DELIVERER = Path(__file__).resolve().parent / "outbox_deliverer.py"


def event(i: int) -> dict[str, Any]:
    return {"event": "alert", "alert_id": f"a{i}", "host_id": "h", "severity": "critical"}


class Deliverers:
    """Deliverer processes, stopped (or killed) by the test and reaped at the end."""

    def __init__(self, where: str, url: str) -> None:
        self.where, self.url = where, url
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, lease_s: float, max_parallel: int = 8) -> None:
        args = [self.where, self.url, name, str(lease_s), str(max_parallel)]
        proc = subprocess.Popen(
            [sys.executable, str(DELIVERER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", line + (proc.stderr.read() if proc.stderr else "")
        self.procs[name] = proc

    def stop(self, name: str) -> int:
        """SIGTERM; how many rows it delivered."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        return int(out.split()[-1])

    def kill(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(timeout=10)

    def reap(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def deliverers(db_location: str) -> Iterator[Callable[[str], Deliverers]]:
    made: list[Deliverers] = []

    def make(url: str) -> Deliverers:
        made.append(Deliverers(db_location, url))
        return made[-1]

    yield make
    for d in made:
        d.reap()


def enqueue(db: SqlDatabase, url: str, n: int) -> tuple[Outbox, set[str]]:
    """N events queued by a producer that delivers nothing itself (a worker's judge)."""
    producer = Outbox(db, [destination({"url": url, "name": "hook"})])
    return producer, {producer.enqueue(event(i)) for i in range(n)}


def wait_delivered(producer: Outbox, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while producer.depth() and time.monotonic() < end:
        time.sleep(0.05)
    assert producer.depth() == 0, producer.rows()


def accepted_once(receiver: WebhookReceiver) -> Counter[str]:
    return Counter(r["headers"]["Webhook-Id"] for r in receiver.records)


def test_two_deliverers_send_each_event_once(
    db_location: str, deliverers: Callable[[str], Deliverers]
) -> None:
    n = 80
    db = open_database(db_location)
    with WebhookReceiver(answer_after_s=0.05) as receiver:
        procs = deliverers(receiver.url)
        procs.start("one", lease_s=30)
        procs.start("two", lease_s=30)
        producer, ids = enqueue(db, receiver.url, n)
        wait_delivered(producer, 60)
        time.sleep(0.5)  # a duplicate would arrive now
        by_one, by_two = procs.stop("one"), procs.stop("two")
        got = accepted_once(receiver)
    db.close()
    assert set(got) == ids and len(ids) == n
    assert max(got.values()) == 1, [k for k, v in got.items() if v > 1]
    assert by_one + by_two == n and by_one > 0 and by_two > 0, (by_one, by_two)


def test_a_deliverer_killed_mid_lease_leaves_its_rows_to_the_other(
    db_location: str, deliverers: Callable[[str], Deliverers]
) -> None:
    n, held, lease_s = 20, 5, 8.0
    db = open_database(db_location)
    with WebhookReceiver(hold_first=held) as receiver:
        procs = deliverers(receiver.url)
        producer, ids = enqueue(db, receiver.url, n)
        procs.start("doomed", lease_s=lease_s, max_parallel=held)
        end = time.monotonic() + 20
        while len(receiver.held) < held and time.monotonic() < end:
            time.sleep(0.02)
        assert len(receiver.held) == held  # its first round claimed and posted, unanswered
        leases = dict(
            db.execute("SELECT msg_id, claimed_until FROM outbox WHERE claimed_by=?", ("doomed",))
        )
        assert set(leases) == {r["headers"]["Webhook-Id"] for r in receiver.held}
        procs.start("survivor", lease_s=lease_s)
        procs.kill("doomed")
        receiver.release()
        wait_delivered(producer, 40)
        time.sleep(0.5)
        procs.stop("survivor")
        got = accepted_once(receiver)
        first_accepted = {}
        for r in receiver.records:
            first_accepted.setdefault(r["headers"]["Webhook-Id"], r["received_at"])
    db.close()
    assert set(got) == ids and max(got.values()) == 1, got
    # The dead one's rows went to the survivor only once their lease had run out.
    late = {m: first_accepted[m] - until for m, until in leases.items()}
    assert all(gap >= -0.05 for gap in late.values()), late
