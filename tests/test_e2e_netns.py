"""The whole chain with real processes on two test hosts.

Collector host (namespace C): tocsin-collector, a webhook receiver, one more
TCP listener. File server (namespace A): tocsin-agent watching a share, and a
simulated encryption process. The two namespaces are joined by a veth pair and
nothing else: every packet stays on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from netns import Netns, netns_unavailable_reason, veth_pair
from receiver import read_records
from tocsin.agent.simulate import make_share

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(
        netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())
    ),
]

BIN = Path(sys.executable).parent
COLLECTOR_PORT = 50051
WEBHOOK_PORT = 8080
OTHER_PORT = 9090
HOST_ID = "mairie-fs1"
SHARE_FILES = 2000
ATTACK_RATE = 200.0


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


@dataclass
class Chain:
    collector_ns: Netns
    agent_ns: Netns
    tmp: Path
    share: Path
    hooks: Path
    procs: list[subprocess.Popen[bytes]]

    @property
    def collector_addr(self) -> str:
        return f"{self.collector_ns.address}:{COLLECTOR_PORT}"

    def tocsin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the operator CLI on the collector's host (loopback: --insecure answers no other)."""
        local = f"127.0.0.1:{COLLECTOR_PORT}"
        return self.collector_ns.run(
            [str(BIN / "tocsin"), *args, "--collector", local, "--insecure"]
        )

    def webhooks(self) -> list[dict[str, Any]]:
        return read_records(self.hooks)

    def critical_alert(self) -> dict[str, Any] | None:
        for rec in self.webhooks():
            body = rec["body"]
            if body.get("event") == "alert" and body.get("severity") == "critical":
                return rec
        return None

    def attack(self, progress: Path) -> subprocess.Popen[bytes]:
        proc = self.agent_ns.popen(
            [
                sys.executable,
                "-m",
                "tocsin.agent.simulate",
                "run",
                "encrypt-inplace",
                str(self.share),
                "--rate",
                str(ATTACK_RATE),
                "--progress",
                str(progress),
            ],
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )


@pytest.fixture
def chain_factory(tmp_path: Path) -> Iterator[Callable[[str], Chain]]:
    stack: list[Any] = []

    def start(mode: str) -> Chain:
        ctx = veth_pair("tcs")
        cns, ans = ctx.__enter__()
        stack.append(ctx)
        chain = Chain(cns, ans, tmp_path, tmp_path / "share", tmp_path / "webhooks.jsonl", [])
        stack.append(chain)
        make_share(chain.share, files=SHARE_FILES, seed=11)

        def spawn(ns: Netns, args: list[str], log: str) -> None:
            fh = (tmp_path / log).open("wb")
            chain.procs.append(ns.popen(args, stdout=fh, stderr=subprocess.STDOUT))

        receiver = str(Path(__file__).resolve().parents[1] / "tools" / "receiver.py")
        spawn(
            cns,
            [sys.executable, receiver, "webhook", cns.address, str(WEBHOOK_PORT), str(chain.hooks)],
            "receiver.log",
        )
        spawn(
            cns, [sys.executable, receiver, "listen", cns.address, str(OTHER_PORT)], "listener.log"
        )
        spawn(
            cns,
            [
                str(BIN / "tocsin-collector"),
                "--listen",
                f"0.0.0.0:{COLLECTOR_PORT}",  # the agent's address and the operator's loopback
                "--db",
                str(tmp_path / "collector.db"),
                "--webhook",
                f"http://{cns.address}:{WEBHOOK_PORT}/hook",
                "--respond",
                mode,
                "--insecure",
            ],
            "collector.log",
        )
        ans.wait_connect(cns.address, COLLECTOR_PORT)
        ans.wait_connect(cns.address, OTHER_PORT)
        spawn(
            ans,
            [
                str(BIN / "tocsin-agent"),
                "--collector",
                chain.collector_addr,
                "--watch",
                str(chain.share),
                "--host-id",
                HOST_ID,
                "--state-dir",
                str(tmp_path / "agent-state"),
                "--insecure",
                "--tripwire",
                "off",
            ],
            "agent.log",
        )

        def connected() -> bool:
            res = chain.tocsin("hosts", "--json")
            if res.returncode != 0:
                return False
            hosts = json.loads(res.stdout)
            return any(h["host_id"] == HOST_ID and h["connected"] for h in hosts)

        try:
            wait_for("the agent to connect", connected, timeout_s=30, interval_s=0.5)
        except AssertionError:
            raise AssertionError("agent never connected\n" + chain.logs()) from None
        time.sleep(1.0)  # the agent's watches are in place before it says hello; settle
        return chain

    yield start

    for item in reversed(stack):
        if isinstance(item, Chain):
            for proc in item.procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, 18)  # SIGCONT, in case it was stopped
                    proc.kill()
                    proc.wait(timeout=10)
        else:
            item.__exit__(None, None, None)


def progress_times(progress: Path) -> list[float]:
    if not progress.exists():
        return []
    return [float(line.split(" ", 1)[0]) for line in progress.read_text().splitlines() if line]


def tocsin_table_present(ns: Netns) -> bool:
    res = ns.run(["nft", "list", "tables"])
    return "inet tocsin" in res.stdout


def test_enforce_suspends_isolates_and_release_restores(
    chain_factory: Callable[[str], Chain],
) -> None:
    chain = chain_factory("enforce")
    progress = chain.tmp / "attack.progress"
    attacker = chain.attack(progress)
    proc = psutil.Process(attacker.pid)

    alert = wait_for("a critical webhook", chain.critical_alert, timeout_s=40)
    body = alert["body"]
    assert body["host_id"] == HOST_ID
    assert body["reasons"], body
    assert body["process"] is not None and body["process"]["pid"] == attacker.pid, body

    try:
        wait_for(
            "the attacker to be stopped",
            lambda: proc.status() == psutil.STATUS_STOPPED,
            timeout_s=15,
        )
    except AssertionError:
        raise AssertionError("attacker not stopped\n" + chain.logs()) from None
    time.sleep(0.3)
    ruined = progress_times(progress)
    assert 0 < len(ruined) < SHARE_FILES, "the attack finished before it was stopped"
    seconds_to_critical = alert["received_at"] - ruined[0]

    # Isolated: the collector still reachable, anything else on its host not.
    wait_for("the isolation table", lambda: tocsin_table_present(chain.agent_ns), timeout_s=15)
    assert chain.agent_ns.can_connect(chain.collector_ns.address, COLLECTOR_PORT)
    assert not chain.agent_ns.can_connect(chain.collector_ns.address, OTHER_PORT)

    # The outcome reached the operator as an action event.
    wait_for(
        "action webhooks",
        lambda: (
            {
                (b["body"].get("action"), b["body"].get("status"))
                for b in chain.webhooks()
                if b["body"].get("event") == "action"
            }
            >= {("suspend", "done"), ("isolate", "done")}
        ),
        timeout_s=15,
    )

    # The files stay as they were while the process is stopped.
    time.sleep(1.0)
    assert len(progress_times(progress)) == len(ruined)

    res = chain.tocsin("release", HOST_ID, "--resume")
    assert res.returncode == 0, res.stderr + res.stdout + chain.logs()
    wait_for(
        "the listener to be reachable again",
        lambda: chain.agent_ns.can_connect(chain.collector_ns.address, OTHER_PORT),
        timeout_s=15,
    )
    assert not tocsin_table_present(chain.agent_ns)
    wait_for(
        "the attacker to be resumed", lambda: proc.status() != psutil.STATUS_STOPPED, timeout_s=10
    )

    figures = {
        "rate_files_per_s": ATTACK_RATE,
        "files_ruined_before_stop": len(ruined),
        "seconds_first_ruined_to_critical_webhook": round(seconds_to_critical, 3),
    }
    print("E2E-FIGURES " + json.dumps(figures))
    (Path(os.environ.get("TOCSIN_FIGURES_DIR", chain.tmp)) / "e2e-figures.json").write_text(
        json.dumps(figures)
    )


def test_dry_run_changes_nothing_and_says_what_it_would_do(
    chain_factory: Callable[[str], Chain],
) -> None:
    chain = chain_factory("dry-run")
    progress = chain.tmp / "attack.progress"
    attacker = chain.attack(progress)

    alert = wait_for("a critical webhook", chain.critical_alert, timeout_s=40)
    actions = alert["body"]["actions"]
    assert actions, alert["body"]
    assert {a["status"] for a in actions} == {"dry-run"}, actions
    assert {"suspend", "isolate"} <= {a["action"] for a in actions}, actions

    # Never stopped: the attack runs to its end, and the network stays open.
    assert attacker.wait(timeout=60) == 0
    assert len(progress_times(progress)) == SHARE_FILES
    assert not tocsin_table_present(chain.agent_ns)
    assert chain.agent_ns.can_connect(chain.collector_ns.address, OTHER_PORT)
