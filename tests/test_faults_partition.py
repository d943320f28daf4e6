"""The link between the agents' host and the collector's host down for two real minutes.

Collector host (namespace C): tocsin-collector (--silent-after 30) and a webhook
receiver. File server (namespace A): the 20-agent fleet (tests/fleet.py) and a
real tocsin-agent watching a share that a writer in A keeps changing. The veth
between them goes down for 120 s (``ip -n A link set DEV down``), then up. The
agents keep spooling, keepalives end the dead streams, the collector says
``host_silent`` for every host and ``host_back`` when they return, every
host stores windows again within ``RECONNECT_BUDGET_S`` of the link's return,
and every window created is stored exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transport_procs import (
    BIN,
    FLEET,
    CollectorProc,
    created_from_log,
    duplicates_dropped,
    ledger,
    spooled,
    stored,
    wait_for,
)

from netns import netns_unavailable_reason, veth_pair
from receiver import read_records

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.faults,
    pytest.mark.skipif(
        netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason())
    ),
]

PARTITION_S = float(os.environ.get("TOCSIN_PARTITION_S", "120"))  # the issue asks for 120
AGENTS = 20
# Link up -> every host storing windows again: gRPC's reconnect backoff (5 s cap,
# jittered up to 6 s) and the first commit, on a loaded 2-core machine.
RECONNECT_BUDGET_S = 10.0
PORT = 50061
HOOK_PORT = 8081
WRITER = (
    "import sys,time,pathlib\n"
    "d=pathlib.Path(sys.argv[1]); i=0\n"
    "while True:\n"
    "    (d/f'doc{i%50}.txt').write_text(f'version {i}\\n'*20); i+=1; time.sleep(0.1)\n"
)


def per_host(windows: dict[tuple[str, str], list[int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (host, _), seqs in windows.items():
        out[host] = out.get(host, 0) + len(seqs)
    return out


@pytest.mark.timeout(600)  # two minutes down, catch-up, drain: past the suite's 300 s
def test_link_down_two_minutes_nothing_lost(tmp_path: Path) -> None:
    with veth_pair("tcp") as (cns, ans):
        procs: list[subprocess.Popen[bytes]] = []
        share = tmp_path / "share"
        share.mkdir()
        hooks = tmp_path / "hooks.jsonl"
        receiver = str(Path(__file__).resolve().parents[1] / "tools" / "receiver.py")
        procs.append(
            cns.popen(
                [sys.executable, receiver, "webhook", cns.address, str(HOOK_PORT), str(hooks)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        col = CollectorProc(
            tmp_path / "tocsin.db",
            tmp_path / "collector.log",
            f"{cns.address}:{PORT}",
            [
                "--insecure",
                "--silent-after",
                str(PARTITION_S / 4),
                "--webhook",
                f"http://{cns.address}:{HOOK_PORT}/hook",
            ],
            prefix=cns.cmd([]),
        )
        addr = col.start()
        try:

            def spawn(args: list[str], log: str) -> subprocess.Popen[bytes]:
                p = ans.popen(args, stdout=(tmp_path / log).open("ab"), stderr=subprocess.STDOUT)
                procs.append(p)
                return p

            fleet = spawn(
                [
                    sys.executable,
                    str(FLEET),
                    "--collector",
                    addr,
                    "--dir",
                    str(tmp_path / "fleet"),
                    "--agents",
                    str(AGENTS),
                    "--rate",
                    "2",
                    "--backoff-max-s",
                    "5",
                ],
                "fleet.log",
            )
            agent = spawn(
                [
                    str(BIN / "tocsin-agent"),
                    "--collector",
                    addr,
                    "--watch",
                    str(share),
                    "--host-id",
                    "real-agent",
                    "--state-dir",
                    str(tmp_path / "st"),
                    "--insecure",
                    "--window-s",
                    "0.5",
                    "--tripwire",
                    "off",
                ],
                "agent.log",
            )
            writer = spawn([sys.executable, "-c", WRITER, str(share)], "writer.log")

            def depths() -> dict[str, int]:
                spools = [
                    *sorted((tmp_path / "fleet").glob("fleet-*/spool.sqlite")),
                    tmp_path / "st" / "spool.sqlite",
                ]
                assert len(spools) == AGENTS + 1
                return {p.parent.name: sum(map(len, spooled(p).values())) for p in spools}

            def depth() -> int:
                return sum(depths().values())

            wait_for("all hosts streaming", lambda: len(stored(col.db)) == AGENTS + 1, 60)
            dev = ans.run(["ip", "-o", "link", "show", "type", "veth"]).stdout.split(":")[1]
            dev = dev.strip().split("@")[0]
            before = sum(map(len, stored(col.db).values()))
            subprocess.run(["ip", "-n", ans.name, "link", "set", dev, "down"], check=True)
            t_down = time.monotonic()
            time.sleep(PARTITION_S)
            during = sum(map(len, stored(col.db).values()))
            backlog = depth()
            subprocess.run(["ip", "-n", ans.name, "link", "set", dev, "up"], check=True)
            outage_s = time.monotonic() - t_down
            # Windows made in the first seconds may still have been in flight; after that
            # nothing can arrive while the link is down.
            assert during - before < 200, (before, during)
            assert backlog > AGENTS * PARTITION_S, (
                backlog,
                created_from_log(tmp_path / "fleet" / "created.log"),
            )

            t_up = time.monotonic()
            at_up = per_host(stored(col.db))
            back_s: dict[str, float] = {}

            def every_host_back() -> bool:
                now = time.monotonic() - t_up
                for host, n in per_host(stored(col.db)).items():
                    if n > at_up.get(host, 0):
                        back_s.setdefault(host, round(now, 1))
                return len(back_s) == AGENTS + 1

            wait_for("every host to store a window again", every_host_back, 60, 0.25)
            # gRPC reconnects within its capped backoff (5 s, +-20 %): no agent waits out
            # a backoff of its own on top (up to 15 s for tocsin-agent) after a stream
            # failed at once with the stale "Network is unreachable" of the outage.
            slowest = max(back_s, key=back_s.__getitem__)
            assert back_s[slowest] < RECONNECT_BUDGET_S, sorted(back_s.items())
            try:
                wait_for("catch-up", lambda: depth() < 50, 120, 1)
            except AssertionError:
                stuck = {k: v for k, v in depths().items() if v}
                agent_rc = agent.poll()
                for p in (agent, fleet):  # every thread's stack, to their logs
                    if p.poll() is None:
                        p.send_signal(signal.SIGUSR2)
                time.sleep(1)
                tails = "\n".join(
                    f"--- {name} (last 4000 chars)\n{(tmp_path / name).read_text()[-4000:]}"
                    for name in ("agent.log", "fleet.log", "collector.log")
                )
                raise AssertionError(
                    f"no catch-up: still spooled {stuck}; agent exit status {agent_rc}\n{tails}"
                ) from None
            catch_up_s = time.monotonic() - t_up
            fleet.send_signal(signal.SIGUSR1)
            writer.kill()
            time.sleep(1.5)
            wait_for("every spool to drain", lambda: depth() == 0, 60, 0.5)
            for p in (fleet, agent):
                p.send_signal(signal.SIGTERM)
                assert p.wait(30) == 0
            created = created_from_log(tmp_path / "fleet" / "created.log")
            for key, seqs in stored(col.db).items():
                created[key] = max(created.get(key, 0), max(seqs))
            figures = ledger(created, col.db)
            wait_for(
                "host_back webhooks",
                lambda: (
                    len([r for r in read_records(hooks) if r["body"]["event"] == "host_back"])
                    >= AGENTS + 1
                ),
                30,
            )
            assert col.stop() == 0
            events = [r["body"] for r in read_records(hooks)]
            silent = {e["host_id"] for e in events if e["event"] == "host_silent"}
            back = {e["host_id"] for e in events if e["event"] == "host_back"}
            assert len(silent) == AGENTS + 1 and back == silent
            figures["duplicates_dropped"] = duplicates_dropped(col.text())
            figures["spooled_during_outage"] = backlog
            figures["outage_s"] = int(outage_s)
            figures["catch_up_s"] = round(catch_up_s, 1)
            figures["reconnect_max_s"] = back_s[slowest]
            print("\n[link down 2 min] " + " ".join(f"{k}={v}" for k, v in figures.items()))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            col.stop()
