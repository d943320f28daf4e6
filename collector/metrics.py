"""The collector's Prometheus ``/metrics`` endpoint (``--metrics HOST:PORT``, off by default).

Contract: ``attach_metrics(listen, collector, outbox, scorer)`` serves the
text exposition on ``http://HOST:PORT/metrics`` from a daemon thread (its own
registry, nothing global) and returns a ``MetricsServer`` (``address`` is the
bound address, port 0 picks one; ``close()``). Values are read at scrape time
from the live parts (ingest, router, responder, outbox, fleet guard, hooks),
so nothing on the hot path pays for metrics except two cheap observers:
``ObservedScorer`` (a ``Scorer`` that counts every score into a histogram)
and ``MeteredStage`` (counts the events, drops and spool drops the agents
report in each stored window). Families (all prefixed ``tocsin_collector_``):
windows_total, windows_duplicate_total, events_total{kind},
agent_events_dropped_total, agent_spool_dropped{host_id}, score (histogram),
scoring_dropped_total, alerts_total{severity}, actions_total{kind,status},
commands_dropped_total, webhook_deliveries_total{destination,outcome},
webhook_outbox_depth, webhook_dropped_total, hosts{state},
fleet_guard_held_total, hook_runs_total{status}, bad_streams_total.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
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
from tocsin.collector.protocols import Scorer
from tocsin.v1 import telemetry_pb2 as pb

SCORE_BUCKETS = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0)
_EVENT_FIELDS = ("created", "modified", "deleted", "moved")


class ObservedScorer:
    """A ``Scorer`` that passes through and counts scores into a histogram."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.feature_names = inner.feature_names
        self.threshold = inner.threshold
        self._lock = threading.Lock()
        self.bucket_counts = [0] * len(SCORE_BUCKETS)
        self.count = 0
        self.total = 0.0

    def score(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        scores = self.inner.score(X)
        finite = scores[np.isfinite(scores)]
        idx = np.searchsorted(np.asarray(SCORE_BUCKETS), finite, side="left")
        with self._lock:
            for i in idx.tolist():
                if i < len(SCORE_BUCKETS):
                    self.bucket_counts[i] += 1
            self.count += int(finite.size)
            self.total += float(finite.sum())
        return scores

    def explain(self, x: npt.NDArray[np.float64]) -> list[tuple[str, float]]:
        return self.inner.explain(x)

    def histogram(self) -> tuple[list[tuple[str, float]], float]:
        with self._lock:
            cumulative, running = [], 0
            for bound, n in zip(SCORE_BUCKETS, self.bucket_counts, strict=True):
                running += n
                cumulative.append((repr(bound), float(running)))
            cumulative.append(("+Inf", float(self.count)))
            return cumulative, self.total


class MeteredStage:
    """Wraps the judge stage: counts what each stored window reports, then judges it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.events: Counter[str] = Counter()
        self.agent_events_dropped = 0
        self.spool_dropped: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def judge_window(self, host_id: str, boot_id: str, w: pb.Window, x: Any) -> Any:
        for kind in _EVENT_FIELDS:
            self.events[kind] += int(getattr(w, f"events_{kind}"))
        self.agent_events_dropped += int(w.events_dropped) + int(w.queue_overflows)
        self.spool_dropped[host_id] = int(w.spool_dropped)
        return await self.inner.judge_window(host_id, boot_id, w, x)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class _CollectorFamilies:
    def __init__(
        self,
        collector: Any,
        outbox: Any,
        scorer: ObservedScorer | None,
        stage: MeteredStage,
        housekeeper: Housekeeper | None,
    ) -> None:
        self.c, self.outbox, self.scorer, self.stage = collector, outbox, scorer, stage
        self.housekeeper = housekeeper

    def collect(self) -> Iterator[Metric]:
        p = "tocsin_collector_"
        tel, responder, router = self.c.telemetry, self.c.responder, self.c.router
        yield _counter(p + "windows", "Windows stored", tel.windows_stored)
        yield _counter(p + "windows_duplicate", "Resent windows already stored", tel.duplicates)
        yield _counter(p + "bad_streams", "Agent streams ended on an error", tel.bad_streams)
        ev = CounterMetricFamily(p + "events", "File events agents reported", labels=["kind"])
        for kind in _EVENT_FIELDS:
            ev.add_metric([kind], self.stage.events[kind])
        yield ev
        yield _counter(
            p + "agent_events_dropped",
            "Events agents reported lost",
            self.stage.agent_events_dropped,
        )
        sp = GaugeMetricFamily(
            p + "agent_spool_dropped",
            "Windows an agent dropped from its full spool (since boot)",
            labels=["host_id"],
        )
        for host, n in sorted(self.stage.spool_dropped.items()):
            sp.add_metric([host], n)
        yield sp
        if self.scorer is not None:
            buckets, total = self.scorer.histogram()
            yield HistogramMetricFamily(
                p + "score", "Anomaly scores of windows", buckets=buckets, sum_value=total
            )
        batch = getattr(self.stage.inner, "batch", None)
        yield _counter(
            p + "scoring_dropped",
            "Windows judged without a score (queue full)",
            getattr(batch, "dropped", 0),
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
            for dest in self.outbox.destinations:
                wd.add_metric([dest, outcome], counts[dest])
        yield wd
        yield GaugeMetricFamily(
            p + "webhook_outbox_depth",
            "Webhook messages not yet delivered",
            value=self.outbox.depth(),
        )
        yield _counter(
            p + "webhook_dropped",
            "Events refused by a full outbox",
            self.outbox.dropped + responder.posts_dropped,
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
        if self.housekeeper is not None:
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


def attach_metrics(
    listen: str,
    collector: Any,
    outbox: Any,
    scorer: ObservedScorer | None = None,
    housekeeper: Housekeeper | None = None,
) -> MetricsServer:
    """Meter ``collector`` and serve /metrics on ``listen`` (see module contract)."""
    stage = MeteredStage(collector.telemetry.stage)
    collector.telemetry.stage = stage
    registry = CollectorRegistry(auto_describe=False)
    families = _CollectorFamilies(collector, outbox, scorer, stage, housekeeper)
    registry.register(families)  # type: ignore[arg-type]
    host, port = parse_hostport(listen)
    server, thread = start_http_server(port, host, registry=registry)
    return MetricsServer(server, thread)
