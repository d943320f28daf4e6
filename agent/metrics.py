"""The agent's Prometheus ``/metrics`` endpoint (``--metrics HOST:PORT``, off by default).

Contract: ``AgentMetrics(agent)`` is a prometheus-client collector that reads
the live parts at scrape time (watcher, window loop, spool, shipper, actions,
firewall) plus what ``observe_window(w)`` counted from each closed window (file
events by kind, tripwire firings). ``serve(listen)`` serves it from a daemon thread on
its own registry and returns the bound (host, port); ``close()`` stops it.
Families (prefix ``tocsin_agent_``): events_total{kind}, windows_total,
events_dropped_total, queue_overflows_total, spool_depth, spool_dropped_total,
connected, connections_total, results_dropped_total, actions_total{kind,status},
tripwire_fired_total, isolated, blocked_clients, firewall_reapplied_total,
suspended_processes.

prometheus-client is imported only when the endpoint is served: an agent
without ``--metrics`` does not pay its few megabytes of memory.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tocsin.v1 import telemetry_pb2 as pb

if TYPE_CHECKING:
    from prometheus_client.core import Metric

_KINDS = ("created", "modified", "deleted", "moved")


class AgentMetrics:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._lock = threading.Lock()
        self.events: Counter[str] = Counter()
        self.tripwire_fired = 0
        self._server: Any = None

    def observe_window(self, w: pb.Window) -> None:
        with self._lock:
            for kind in _KINDS:
                self.events[kind] += int(getattr(w, f"events_{kind}"))
            self.tripwire_fired += int(w.tripwire_fired)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = "tocsin_agent_"
        a = self.agent
        ev = CounterMetricFamily(p + "events", "File events seen", labels=["kind"])
        with self._lock:
            for kind in _KINDS:
                ev.add_metric([kind], self.events[kind])
            fired = self.tripwire_fired
        yield ev
        yield CounterMetricFamily(
            p + "windows", "Windows closed and spooled", value=a.window.windows_closed
        )
        yield CounterMetricFamily(
            p + "events_dropped",
            "Events lost to a full internal queue",
            value=a.watcher.events_dropped,
        )
        yield CounterMetricFamily(
            p + "queue_overflows", "Kernel inotify queue overflows", value=a.watcher.queue_overflows
        )
        yield GaugeMetricFamily(
            p + "spool_depth", "Windows spooled, not yet acknowledged", value=a.spool.depth
        )
        yield CounterMetricFamily(
            p + "spool_dropped", "Windows dropped from the full spool", value=a.spool.dropped
        )
        yield GaugeMetricFamily(
            p + "connected",
            "1 while the collector stream is up",
            value=1 if a.shipper.connected.is_set() else 0,
        )
        yield CounterMetricFamily(
            p + "connections", "Streams opened to the collector", value=a.shipper.connections
        )
        yield CounterMetricFamily(
            p + "results_dropped",
            "Action reports dropped (queue full)",
            value=a.shipper.results_dropped,
        )
        ac = CounterMetricFamily(
            p + "actions", "Actions carried out, by outcome", labels=["kind", "status"]
        )
        for (kind, status), n in sorted(a.actions.outcomes.items()):
            ac.add_metric([kind, status], n)
        yield ac
        yield CounterMetricFamily(
            p + "tripwire_fired", "Windows where the tripwire fired", value=fired
        )
        yield GaugeMetricFamily(
            p + "isolated",
            "1 while the isolation table is in place",
            value=1 if a.firewall.isolated else 0,
        )
        yield GaugeMetricFamily(
            p + "blocked_clients",
            "Client addresses blocked on this host",
            value=len(a.firewall.blocked),
        )
        yield CounterMetricFamily(
            p + "firewall_reapplied",
            "Times tocsin's nftables table was found removed or altered and written again",
            value=a.firewall.reapplied,
        )
        yield GaugeMetricFamily(
            p + "suspended_processes",
            "Processes tocsin keeps stopped",
            value=len(a.actions.suspended),
        )

    def serve(self, host: str, port: int) -> tuple[str, int]:
        from prometheus_client.exposition import start_http_server
        from prometheus_client.registry import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)  # type: ignore[arg-type]
        self._server, _ = start_http_server(port, host, registry=registry)
        bound: tuple[str, int] = self._server.server_address[:2]
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
