"""The audit and the operator's tables: tocsin hosts|alerts|incidents|actions|isolate|release
against a real collector (in-process gRPC) and a fake agent (a real gRPC client)."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from fakeagent import FakeAgent
from tocsin.collector.app import assemble
from tocsin.collector.outbox import Outbox
from tocsin.collector.protocols import ThresholdScorer
from tocsin.collector.store import SqliteStore

BIN = Path(sys.executable).parent


async def tocsin(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "tocsin"),
        *args,
        "--collector",
        f"127.0.0.1:{port}",
        "--insecure",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def _until(pred: Any, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.05)


def test_every_action_is_audited_and_listed(tmp_path: Path) -> None:
    asyncio.run(_audit(tmp_path))


async def _audit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    c = assemble(store, ThresholdScorer(), Outbox(tmp_path / "c.db", []), mode="enforce")
    port = await c.start("127.0.0.1:0")
    agent = FakeAgent(port, "fs-audit")
    task = asyncio.create_task(agent.run())
    me = f"operator:{getpass.getuser()}"
    try:
        await _until(lambda: {"suspend", "isolate"} <= set(agent.kinds()))
        await _until(lambda: all(a.status == "done" for a in store.list_actions()), 5)

        rc, out = await tocsin(port, "hosts")
        assert rc == 0 and out.splitlines()[0].split()[:2] == ["HOST", "CONNECTED"]
        assert "fs-audit" in out and "YES" in out  # isolated
        rc, out = await tocsin(port, "alerts")
        assert rc == 0 and "critical" in out and "python3 (pid 4242)" in out

        rc, out = await tocsin(port, "isolate", "fs-audit")
        assert rc == 0 and "isolate fs-audit: done" in out, out
        assert "REQUESTED" in out and me in out  # the host's recent actions, as a table
        rc, out = await tocsin(port, "release", "fs-audit", "--resume")
        assert rc == 0 and "release fs-audit: done" in out, out

        rc, out = await tocsin(port, "actions", "--json")
        actions = json.loads(out)
        seen = {(a["kind"], a["requested_by"], a["status"]) for a in actions}
        assert {
            ("suspend", "collector", "done"),
            ("isolate", "collector", "done"),
            ("isolate", me, "done"),
            ("release", me, "done"),
            ("resume", me, "done"),
        } <= seen, seen
        assert all(a["requested_at"] and a["finished_at"] for a in actions)
        rc, table = await tocsin(port, "actions")
        header = table.splitlines()[0].split()
        assert header == [
            "REQUESTED",
            "HOST",
            "ACTION",
            "BY",
            "STATUS",
            "FINISHED",
            "PIDS",
            "DETAIL",
        ]
        assert len(table.splitlines()) == len(actions) + 1

        rc, out = await tocsin(port, "incidents", "--json")
        (incident,) = json.loads(out)
        assert incident["host_id"] == "fs-audit" and incident["severity"] == "critical"
        assert [(a["action"], a["status"]) for a in incident["actions"]] == [
            ("suspend", "done"),
            ("isolate", "done"),
        ]
        rc, out = await tocsin(port, "incidents")
        assert "suspend done, isolate done" in out and "LAST ALERT" in out
        audit = [(who, what) for _, who, what, _ in store.audit_log(100)]
        assert (me, "isolate requested") in audit and ("agent:fs-audit", "isolate done") in audit
    finally:
        agent.stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await c.stop(grace_s=1)
