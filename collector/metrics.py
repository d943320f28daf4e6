"""The collector's Prometheus ``/metrics`` endpoint (``--metrics HOST:PORT``, off by default).

Contract: ``serve_metrics(listen, collector, outbox, housekeeper)`` serves the text
exposition on ``http://HOST:PORT/metrics`` from a daemon thread (its own
registry, nothing global) and returns a ``MetricsServer`` (``address`` is the
bound address, port 0 picks one; ``close()``). Values are read at scrape time
from the live parts (ingest, judge stage and its ``WindowMeter``, router,
responder, outbox, fleet guard, hooks); it changes none of them. Families
(all prefixed ``tocsin_collector_``):
windows_total, windows_duplicate_total, alarms_total (windows with evidence judged from an
``Alarm`` call, ahead of their stream), windows_in_flight, loop_lag_seconds,
pushed_back_total (``Admission``: how far behind, what was pushed back), events_total{kind},
agent_events_dropped_total, agent_spool_dropped{host_id}, score (histogram),
scoring_dropped_total, alerts_total{severity}, actions_total{kind,status},
commands_dropped_total, action_results_refused_total,
suspended_pids_dropped_total, clock_skew_windows_total, operator_denied_total,
webhook_deliveries_total{destination,outcome} (a
receiver's name or redacted URL, never its secret path),
webhook_outbox_depth, webhook_dropped_total, hosts{state},
fleet_guard_held_total, hook_runs_total{status}, bad_streams_total,
disk_used_ratio, rows_pruned_total.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import CollectorRegistry

from tocsin.collector.grpcconf import parse_hostport
from tocsin.collector.housekeeping import Housekeeper
from tocsin.collector.meter import EVENT_KINDS

if TYPE_CHECKING:
    from tocsin.collector.outbox import Outbox
    from tocsin.collector.server import Collector


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class _CollectorFamilies:
    def __init__(self, collector: Collector, outbox: Outbox, housekeeper: Housekeeper) -> None:
        self.c, self.outbox, self.housekeeper = collector, outbox, housekeeper

    def collect(self) -> Iterator[Metric]:
        p = "tocsin_collector_"
        tel, responder, router = self.c.telemetry, self.c.responder, self.c.router
        meter, stage = self.c.stage.meter, self.c.stage
        yield _counter(p + "windows", "Windows stored", tel.windows_stored)
        yield _counter(p + "windows_duplicate", "Resent windows already stored", tel.duplicates)
        yield _counter(p + "alarms", "Windows with evidence judged from an Alarm call", tel.alarms)
        yield _counter(p + "bad_streams", "Agent streams ended on an error", tel.bad_streams)
        watch = self.c.admission
        yield GaugeMetricFamily(
            p + "windows_in_flight",
            "Windows held in memory, waiting for their commit or their judgement",
            value=watch.in_flight,
        )
        yield GaugeMetricFamily(
            p + "loop_lag_seconds",
            "How late the event loop runs (smoothed); over 0.1 s the collector is behind",
            value=watch.lag_s,
        )
        yield _counter(
            p + "pushed_back",
            "Quiet windows refused with a pushback while the collector was behind",
            watch.refused,
        )
        ev = CounterMetricFamily(p + "events", "File events agents reported", labels=["kind"])
        for kind in EVENT_KINDS:
            ev.add_metric([kind], meter.events[kind])
        yield ev
        yield _counter(
            p + "agent_events_dropped",
            "Events agents reported lost",
            meter.agent_events_dropped,
        )
        sp = GaugeMetricFamily(
            p + "agent_spool_dropped",
            "Windows an agent dropped from its full spool (since boot)",
            labels=["host_id"],
        )
        for host, n in sorted(meter.spool_dropped.items()):
            sp.add_metric([host], n)
        yield sp
        buckets, total = meter.histogram()
        yield HistogramMetricFamily(
            p + "score", "Anomaly scores of windows", buckets=buckets, sum_value=total
        )
        yield _counter(
            p + "scoring_dropped",
            "Windows judged without a score (queue full)",
            stage.batch.dropped,
        )
        al = CounterMetricFamily(p + "alerts", "Alerts raised", labels=["severity"])
        for sev in ("warning", "critical"):
            al.add_metric([sev], responder.alerts_total[sev])
        yield al
        ac = CounterMetricFamily(
            p + "actions",
            "Action outcomes (agent reports, holds, hooks)",
            labels=["kind", "status"],
        )
        for (kind, status), n in sorted(responder.actions_total.items()):
            ac.add_metric([kind, status], n)
        yield ac
        yield _counter(
            p + "commands_dropped", "Commands dropped from a full host queue", router.dropped
        )
        yield _counter(
            p + "action_results_refused",
            "Agent reports on commands not sent to that agent's host",
            responder.results_refused,
        )
        yield _counter(
            p + "suspended_pids_dropped",
            "Suspended pids agents reported past the per-host bound",
            sum(responder.suspended_pids_dropped.values()),
        )
        yield _counter(
            p + "clock_skew_windows",
            "Windows re-dated because the agent's clock was off by more than the allowed skew",
            tel.clock_skew_windows,
        )
        yield _counter(
            p + "operator_denied",
            "Operator calls refused without TLS because they did not come from loopback",
            self.c.operator.denied,
        )
        wd = CounterMetricFamily(
            p + "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            labels=["destination", "outcome"],
        )
        stats = self.outbox.stats
        for outcome, counts in (
            ("delivered", stats.delivered),
            ("failed_attempt", stats.failed_attempts),
            ("rejected", stats.rejected),
            ("expired", stats.expired),
        ):
            for dest in self.outbox.destinations.values():
                wd.add_metric([dest.label, outcome], counts[dest.dest_id])
        yield wd
        yield GaugeMetricFamily(
            p + "webhook_outbox_depth",
            "Webhook messages not yet delivered",
            value=self.outbox.depth(),
        )
        yield _counter(
            p + "webhook_dropped",
            "Events refused by a full outbox",
            self.outbox.dropped,
        )
        hosts = list(self.c.store.list_hosts())
        hs = GaugeMetricFamily(p + "hosts", "Hosts by state", labels=["state"])
        hs.add_metric(["known"], len(hosts))
        hs.add_metric(["connected"], sum(1 for h in hosts if router.is_connected(h.host_id)))
        hs.add_metric(["isolated"], sum(1 for h in hosts if h.isolated))
        yield hs
        guard = responder.guard
        yield _counter(
            p + "fleet_guard_held",
            "Automatic isolations held by the fleet guard",
            guard.held_total if guard is not None else 0,
        )
        yield GaugeMetricFamily(
            p + "disk_used_ratio",
            "Used fraction of the filesystem holding the database",
            value=self.housekeeper.disk_used_ratio,
        )
        yield _counter(
            p + "rows_pruned",
            "Rows removed past their retention period",
            self.housekeeper.rows_pruned,
        )
        hr = CounterMetricFamily(p + "hook_runs", "Operator hook runs by status", labels=["status"])
        runs = responder.hooks.runs if responder.hooks is not None else {}
        for status in ("done", "failed", "timeout", "error"):
            hr.add_metric([status], runs.get(status, 0))
        yield hr


class MetricsServer:
    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        self.address: tuple[str, int] = server.server_address[:2]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(
    listen: str, collector: Collector, outbox: Outbox, housekeeper: Housekeeper
) -> MetricsServer:
    """Serve /metrics of these parts on ``listen`` (see module contract)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CollectorFamilies(collector, outbox, housekeeper))  # type: ignore[arg-type]
    host, port = parse_hostport(listen)
    server, thread = start_http_server(port, host, registry=registry)
    return MetricsServer(server, thread)
