"""The ``Scorer`` seam between the judge and the model, and a small stand-in.

A ``Scorer`` turns an ``(n, d)`` float64 matrix of window features (columns in
``feature_names`` order, see ``tocsin.collector.features``) into ``n`` anomaly
scores in (0, 1], higher meaning more unusual; a window whose score is above
``threshold`` is anomalous. ``explain`` names the features that moved one
window's score, most important first. ``score`` is CPU work and may be called
from a worker thread; it must not keep state between calls.

``ThresholdScorer`` is a transparent stand-in (a saturating sum of the
features) for tests and for running the collector without a model file.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tocsin.collector.features import FEATURE_NAMES


class Scorer(Protocol):
    feature_names: tuple[str, ...]
    threshold: float

    def score(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
    def explain(self, x: npt.NDArray[np.float64]) -> list[tuple[str, float]]: ...


class ThresholdScorer:
    """score = 1 - 0.5 * exp(-sum(max(x, 0)) / scale): 0.5 for an idle window, -> 1 when busy."""

    def __init__(self, threshold: float = 0.6, scale: float = 20.0) -> None:
        self.feature_names: tuple[str, ...] = FEATURE_NAMES
        self.threshold = threshold
        self._scale = scale
        self.calls = 0

    def score(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        self.calls += 1
        total = np.clip(np.asarray(X, dtype=np.float64), 0.0, None).sum(axis=1)
        return np.asarray(1.0 - 0.5 * np.exp(-total / self._scale), dtype=np.float64)

    def explain(self, x: npt.NDArray[np.float64]) -> list[tuple[str, float]]:
        pairs = [(n, float(v)) for n, v in zip(self.feature_names, x, strict=True)]
        pairs = [p for p in pairs if p[1] > 0 and math.isfinite(p[1])]
        return sorted(pairs, key=lambda p: -p[1])[:5]
