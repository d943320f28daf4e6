"""A webhook outbox deliverer in a process of its own (a collector worker's), for the tests.

    python tests/outbox_deliverer.py WHERE URL NAME LEASE_S MAX_PARALLEL

opens the database at WHERE (a file or a postgresql:// URL) through the
collector's own door, delivers its outbox to URL as deliverer NAME (polling
every 0.2 s, so rows another process enqueued are seen soon), prints "ready"
once its loop runs, and on SIGTERM prints "delivered N" and exits.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from tocsin.collector.backends import open_database
from tocsin.collector.outbox import Outbox, destination


async def main(where: str, url: str, name: str, lease_s: float, max_parallel: int) -> None:
    db = open_database(where)
    outbox = Outbox(
        db,
        [destination({"url": url, "name": "hook"})],
        retry_initial_s=0.2,
        lease_s=lease_s,
        max_parallel=max_parallel,
        deliverer=name,
        poll_s=0.2,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    outbox.start()
    print("ready", flush=True)
    await stop.wait()
    await outbox.stop()
    print(f"delivered {sum(outbox.stats.delivered.values())}", flush=True)
    db.close()


if __name__ == "__main__":
    where, url, name, lease_s, max_parallel = sys.argv[1:6]
    asyncio.run(main(where, url, name, float(lease_s), int(max_parallel)))
