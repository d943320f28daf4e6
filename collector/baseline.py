"""Per-host baselines: each host starts on the shipped model and learns its own.

Contract of ``HostBaselines``:

- ``scorer_for(host_id)`` is the host's own model once it has one, else the
  shipped model. Both are ``ForestScorer``s with their own ``threshold``.
- ``due(host_id, now_s, in_incident)`` says whether it is time to (re)learn:
  never during an open incident of the host; first after ``learning_s`` of the
  host's own window time, then every ``refit_every_s``; checked at most every
  ``check_every_s`` per host. Times are window timestamps, never the wall clock.
- ``learn(host_id, now_s, skip_spans)`` fits an isolation forest (seeded) on the
  host's stored windows of the last ``history_s`` (newest ``max_windows``),
  leaving out those inside ``skip_spans`` (the spans of its critical
  incidents), and sets the threshold at the ``quantile`` of their own scores,
  never below the shipped model's. Refitting on a sliding window of recent
  history is the slow adaptation. Returns False (nothing changed) with fewer
  than ``min_windows`` usable windows.
- What was learned is kept in table ``host_baselines`` of the collector's
  database (SQLite or PostgreSQL; arrays as an ``.npz`` blob without pickle, the card as JSON)
  and loaded again by the next ``HostBaselines`` on the same database.

Without a database (an in-memory store) nothing is ever learned. The database
is the collector's shared one (``tocsin.collector.db``); the windows learned
from are read through its ``windows`` view.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tocsin.collector.db import Schema, SqlDatabase, upsert_sql
from tocsin.collector.features import FEATURE_NAMES, feature_matrix
from tocsin.collector.model import CARD_FORMAT, export_forest, npz_bytes, parse_arrays
from tocsin.collector.protocols import Scorer
from tocsin.collector.score import ForestScorer
from tocsin.collector.store import unpack_raw
from tocsin.v1 import telemetry_pb2 as pb


@dataclass(frozen=True)
class BaselineConfig:
    learning_s: float = 7 * 86400.0
    refit_every_s: float = 86400.0
    history_s: float = 28 * 86400.0
    check_every_s: float = 600.0
    min_windows: int = 500
    max_windows: int = 20_000
    trees: int = 100
    max_samples: int = 256
    quantile: float = 0.99
    seed: int = 0


_SCHEMA = Schema(
    sqlite="""
CREATE TABLE IF NOT EXISTS host_baselines (
    host_id TEXT PRIMARY KEY, trained_at REAL, windows INTEGER, threshold REAL,
    card TEXT, arrays BLOB
);
""",
    postgresql="""
CREATE TABLE IF NOT EXISTS host_baselines (
    host_id TEXT PRIMARY KEY, trained_at DOUBLE PRECISION, windows BIGINT,
    threshold DOUBLE PRECISION, card TEXT, arrays BYTEA
);
""",
)
_SAVE = upsert_sql(
    "host_baselines",
    ("host_id", "trained_at", "windows", "threshold", "card", "arrays"),
    ("host_id",),
)


class HostBaselines:
    def __init__(
        self, shipped: Scorer, db: SqlDatabase | None, config: BaselineConfig | None = None
    ) -> None:
        self.shipped = shipped
        self.config = config or BaselineConfig()
        self._own: dict[str, ForestScorer] = {}
        self._trained_at: dict[str, float] = {}
        self._checked_at: dict[str, float] = {}
        self._first_s: dict[str, float] = {}
        self._db = db
        if db is not None:
            db.schema(_SCHEMA)
            for host_id, trained_at, card, blob in self._q(
                "SELECT host_id, trained_at, card, arrays FROM host_baselines"
            ):
                parsed = json.loads(card)
                arrays = parse_arrays(bytes(blob), int(parsed["max_samples"]), host_id)
                self._own[host_id] = ForestScorer(arrays, parsed)
                self._trained_at[host_id] = float(trained_at)

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        assert self._db is not None
        return self._db.execute(sql, args)

    def scorer_for(self, host_id: str) -> Scorer:
        return self._own.get(host_id, self.shipped)

    def has_own(self, host_id: str) -> bool:
        return host_id in self._own

    def due(self, host_id: str, now_s: float, in_incident: bool) -> bool:
        cfg = self.config
        if self._db is None or in_incident:
            return False
        if now_s - self._checked_at.get(host_id, float("-inf")) < cfg.check_every_s:
            return False
        self._checked_at[host_id] = now_s
        trained = self._trained_at.get(host_id)
        if trained is not None:
            return now_s - trained >= cfg.refit_every_s
        first = self._first_s.get(host_id)
        if first is None:
            rows = self._q("SELECT MIN(first_start) FROM boots WHERE host_id=?", (host_id,))
            if not rows or rows[0][0] is None:
                return False
            first = self._first_s[host_id] = float(rows[0][0])
        return now_s - first >= cfg.learning_s

    def learn(
        self, host_id: str, now_s: float, skip_spans: Sequence[tuple[float, float]] = ()
    ) -> bool:
        """Fit the host's own model now (CPU work: call it from a worker thread)."""
        from sklearn.ensemble import IsolationForest

        cfg = self.config
        if self._db is None:
            return False
        rows = self._q(
            'SELECT "end", raw, codec FROM windows WHERE host_id=? AND "end" > ? AND "end" <= ?'
            ' ORDER BY "end" DESC LIMIT ?',
            (host_id, now_s - cfg.history_s, now_s, cfg.max_windows),
        )
        kept = [
            pb.Window.FromString(unpack_raw(raw, codec))
            for end, raw, codec in rows
            if raw and not any(a - 1.0 <= end <= b + 1.0 for a, b in skip_spans)
        ]
        if len(kept) < cfg.min_windows:
            return False
        X = feature_matrix(kept[::-1])
        forest = IsolationForest(
            n_estimators=cfg.trees,
            max_samples=min(cfg.max_samples, len(X)),
            random_state=cfg.seed,
        ).fit(X)
        arrays = export_forest(forest)
        card: dict[str, Any] = {
            "format": CARD_FORMAT,
            "model": "isolation-forest",
            "host_id": host_id,
            "feature_names": list(FEATURE_NAMES),
            "n_trees": arrays.n_trees,
            "max_samples": arrays.max_samples,
            "depth": arrays.depth,
            "seed": cfg.seed,
            "threshold": 1.0,
            "trained_at_s": now_s,
            "training": {"windows": len(X)},
            "feature_medians": [float(v) for v in np.median(X, axis=0)],
        }
        scores = ForestScorer(arrays, card).score(X)
        floor = float(self.shipped.threshold)
        card["threshold"] = max(float(np.quantile(scores, cfg.quantile)), floor)
        card["threshold_quantile"] = cfg.quantile
        scorer = ForestScorer(arrays, card)
        self._q(
            _SAVE,
            (host_id, now_s, len(X), card["threshold"], json.dumps(card), npz_bytes(arrays)),
        )
        self._own[host_id] = scorer
        self._trained_at[host_id] = now_s
        return True

    def close(self) -> None:
        self._db = None  # the database is shared: the assembly closes it
