"""Real processes for the transport tests: a tocsin-collector, the fleet, their evidence.

``Windows`` is the ledger every fault test checks: for each (host, boot) the set
of seqs the agents created (their spools, their logs) against the seqs in the
collector's SQLite ``windows`` table.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
FLEET = Path(__file__).resolve().parent / "fleet.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], Any], timeout_s: float = 30, interval_s: float = 0.1
) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class CollectorProc:
    """``tocsin-collector`` as a process, restartable on the same port and database."""

    def __init__(
        self,
        db: Path,
        log: Path,
        listen: str,
        extra: Sequence[str] = (),
        prefix: Sequence[str] = (),
    ) -> None:
        self.db, self.log, self.listen = db, log, listen
        self.extra, self.prefix = list(extra), list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> str:
        offset = self.log.stat().st_size if self.log.exists() else 0
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                str(BIN / "tocsin-collector"),
                "--listen",
                self.listen,
                "--db",
                str(self.db),
                "--respond",
                "off",
                *self.extra,
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        self.starts += 1

        def bound() -> str | None:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            m = re.search(r"listening on (\S+:\d+)", text)
            return m.group(1) if m else None

        return str(wait_for("the collector to listen", bound, 30, 0.05))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def replay(recording: Path, listen: str, host_id: str, timeout_s: float = 300) -> str:
    """``tocsin replay`` of ``recording`` as ``host_id`` at full speed; its output."""
    done = subprocess.run(
        [
            str(BIN / "tocsin"),
            "replay",
            str(recording),
            "--collector",
            listen,
            "--insecure",
            "--speed",
            "0",
            "--host-id",
            host_id,
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def stored(db: Path) -> dict[tuple[str, str], list[int]]:
    """(host, boot) -> sorted seqs in the collector's windows table (read-only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT host_id, boot_id, seq FROM windows").fetchall()
    finally:
        con.close()
    out: dict[tuple[str, str], list[int]] = {}
    for host, boot, seq in rows:
        out.setdefault((host, boot), []).append(int(seq))
    return {k: sorted(v) for k, v in out.items()}


def spooled(spool: Path) -> dict[str, list[int]]:
    """boot -> seqs still waiting in an agent's spool file."""
    if not spool.exists():
        return {}
    con = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT boot_id, seq FROM spool").fetchall()
    finally:
        con.close()
    out: dict[str, list[int]] = {}
    for boot, seq in rows:
        out.setdefault(boot, []).append(int(seq))
    return out


def created_from_log(path: Path) -> dict[tuple[str, str], int]:
    """The fleet's creation log: (host, boot) -> highest seq it created (lines 'host boot seq')."""
    out: dict[tuple[str, str], int] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue  # a line torn by SIGKILL
        key = (parts[0], parts[1])
        out[key] = max(out.get(key, 0), int(parts[2]))
    return out


Stored = dict[tuple[str, str], list[int]]  # (host, boot) -> seqs, as a store holds them


def ledger(
    created: dict[tuple[str, str], int], db: Path | Stored, *more: Path | Stored
) -> dict[str, int]:
    """Check every created window is stored exactly once; returns the figures.

    ``created[(host, boot)]`` is the highest seq the agent created for that boot
    (seqs are contiguous from 1); ``db`` a collector's SQLite file, or what a
    store holds (``Stored``). Raises AssertionError on any loss. With
    ``more`` databases (agents that moved from one collector to another), each
    stores a window at most once and their union holds every created one;
    ``in_two_stores`` counts the windows both hold (acked by neither before
    the first collector was gone, so resent).
    """
    have: dict[tuple[str, str], list[int]] = {}
    in_two = 0
    for one in (db, *more):
        for key, seqs in (one if isinstance(one, dict) else stored(one)).items():
            assert len(seqs) == len(set(seqs)), (
                f"{key}: stored twice in {one if isinstance(one, Path) else 'the store'}"
            )
            in_two += len(set(seqs) & set(have.get(key, [])))
            have[key] = sorted(set(have.get(key, [])) | set(seqs))
    total_created = sum(created.values())
    total_stored = 0
    missing: list[str] = []
    for key, top in created.items():
        seqs = have.get(key, [])
        want = set(range(1, top + 1))
        lost = want - set(seqs)
        if lost:
            missing.append(f"{key}: {len(lost)} lost, e.g. {sorted(lost)[:5]}")
        total_stored += len(set(seqs) & want)
    extra = {k: v for k, v in have.items() if k not in created}
    assert not missing, "windows lost: " + "; ".join(missing[:10])
    assert not extra, f"stored windows nobody created: {list(extra)[:5]}"
    figures = {
        "created": total_created,
        "stored": total_stored,
        "boots": len(created),
        "hosts": len({h for h, _ in created}),
    }
    return {**figures, "in_two_stores": in_two} if more else figures


def duplicates_dropped(log_text: str) -> int:
    """Sum of the collector's 'duplicates N' counters logged at stream ends."""
    return sum(int(m) for m in re.findall(r"duplicates dropped (\d+)", log_text))


def env_with_src() -> dict[str, str]:
    return dict(os.environ)
