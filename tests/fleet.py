"""A fleet of agents in one process: N real Shippers, each with its own on-disk spool.

    python tests/fleet.py --collector HOST:PORT[,HOST:PORT...] --dir D --agents 20 --rate 5

Each agent ``fleet-NN`` keeps its spool in ``D/fleet-NN/spool.sqlite`` (so a
restarted fleet resends what a killed one left, under the old boot ids, like a
restarted tocsin-agent) and creates ``--rate`` windows a second through the
real ``Shipper.submit_window`` (seq assigned, spooled durably). After each
window is spooled, a line ``host boot seq`` is appended to ``D/created.log``
(flushed): the test's record of what was created. Several collectors are
tried in turn, like a tocsin-agent given several. SIGUSR1 stops creating
windows (shipping goes on); SIGTERM stops everything (Goodbye) and exits 0.

Twenty tocsin-agent processes (watchdog, psutil, fanotify, a Python
interpreter each) would need more than the 2 cores the test machine has; this
drives the agent's own spool and shipper code, which is what a transport fault
exercises, with real gRPC and real files, at 20 agents for the cost of one
process.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

from tocsin.agent.ship import HelloInfo, Shipper
from tocsin.agent.spool import WindowSpool
from tocsin.v1 import telemetry_pb2 as pb


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--collector", required=True)
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--rate", type=float, default=5.0, help="windows per second per agent")
    p.add_argument("--spool-max-windows", type=int, default=100_000)
    p.add_argument("--backoff-max-s", type=float, default=3.0)
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s fleet %(levelname)s %(name)s: %(message)s",
    )
    args.dir.mkdir(parents=True, exist_ok=True)
    log_fh = (args.dir / "created.log").open("a", encoding="utf-8")
    log_lock = threading.Lock()
    creating = threading.Event()
    creating.set()
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: creating.clear())
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    shippers: list[Shipper] = []
    for i in range(args.agents):
        host = f"fleet-{i:02d}"
        spool = WindowSpool(args.dir / host / "spool.sqlite", max_windows=args.spool_max_windows)
        boot = str(uuid.uuid4())
        first, *others = args.collector.split(",")
        shipper = Shipper(
            first,
            spool,
            HelloInfo(host, boot, [f"/srv/{host}"], ["suspend"]),
            on_command=lambda c: pb.ActionResult(command_id=c.id, kind=c.kind, status="refused"),
            backoff_initial_s=0.2,
            backoff_max_s=args.backoff_max_s,
            heartbeat_s=2.0,
            other_targets=others,
        )
        shipper.start()
        shippers.append(shipper)

    def produce(shipper: Shipper, offset_s: float) -> None:
        time.sleep(offset_s)
        period = 1.0 / args.rate
        next_at = time.monotonic()
        while not stop.is_set():
            if creating.is_set():
                now = time.time()
                w = pb.Window(
                    files_modified=1,
                    events_modified=2,
                    bytes_written=4096,
                    dirs_touched=1,
                    extensions_touched=1,
                )
                w.start.FromNanoseconds(int((now - period) * 1e9))
                w.end.FromNanoseconds(int(now * 1e9))
                w.top_writers.add(
                    pid=1000,
                    ppid=1,
                    name="smbd",
                    exe="/usr/sbin/smbd",
                    tree_root_pid=1000,
                    files_touched=1,
                    bytes_written=4096,
                )
                seq = shipper.submit_window(w)
                with log_lock:
                    log_fh.write(f"{shipper.hello.host_id} {shipper.hello.boot_id} {seq}\n")
                    log_fh.flush()
            next_at += period
            stop.wait(max(0.0, next_at - time.monotonic()))

    producers = [
        threading.Thread(target=produce, args=(s, i / (args.rate * len(shippers))), daemon=True)
        for i, s in enumerate(shippers)
    ]
    for t in producers:
        t.start()
    print(f"fleet of {len(shippers)} agents started", flush=True)
    while not stop.wait(0.5):
        pass
    for t in producers:
        t.join(timeout=5)
    stoppers = [threading.Thread(target=s.stop, args=(2.0,)) for s in shippers]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join()
    for s in shippers:
        s.spool.close()
    log_fh.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
