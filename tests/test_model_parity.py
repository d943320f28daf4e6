"""ForestScorer equals scikit-learn's -IsolationForest.score_samples on the same trees."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from tocsin.collector.features import FEATURE_NAMES
from tocsin.collector.model import ForestArrays, export_forest
from tocsin.collector.score import ForestScorer

D = len(FEATURE_NAMES)


def _scorer(arrays: ForestArrays, chunk_rows: int = 128) -> ForestScorer:
    card = {
        "feature_names": list(FEATURE_NAMES),
        "n_trees": arrays.n_trees,
        "max_samples": arrays.max_samples,
        "depth": arrays.depth,
        "threshold": 0.6,
    }
    return ForestScorer(arrays, card, chunk_rows=chunk_rows)


def _benign_like(rng: np.random.Generator, n: int) -> np.ndarray:
    X = np.zeros((n, D))
    active = rng.random(n) < 0.6
    X[active] = np.log1p(rng.lognormal(0.5, 1.2, size=(active.sum(), D)))
    X[:, 7] = np.clip(X[:, 7] / 4, 0, 1)  # a fraction
    X[:, 9] = rng.uniform(0, 8, n) * active  # mean entropy
    return X


def _edge_rows(arrays: ForestArrays, rng: np.random.Generator) -> np.ndarray:
    """Rows sitting exactly on thresholds, one float32 ulp either side, and extremes."""
    internal = np.isfinite(arrays.threshold)
    thr = arrays.threshold[internal]
    feat = arrays.feature[internal]
    pick = rng.choice(thr.size, size=300, replace=False)
    rows = []
    for t, f in zip(thr[pick], feat[pick], strict=True):
        t32 = np.float32(t)
        for v in (
            t,
            float(t32),
            float(np.nextafter(t32, np.float32(np.inf))),
            float(np.nextafter(t32, np.float32(-np.inf))),
            float(np.nextafter(t, np.inf)),
            float(np.nextafter(t, -np.inf)),
        ):
            row = rng.normal(size=D)
            row[f] = v
            rows.append(row)
    rows.append(np.full(D, np.inf))
    rows.append(np.full(D, -np.inf))
    rows.append(np.full(D, 1e300))  # overflows float32 like scikit-learn's cast does
    rows.append(np.full(D, -1e300))
    rows.append(np.zeros(D))
    nan_row = rng.normal(size=D)
    nan_row[::3] = np.nan
    rows.append(nan_row)
    rows.append(np.full(D, np.nan))
    return np.vstack(rows)


@pytest.mark.parametrize(
    ("seed", "max_samples", "trees", "data"),
    [
        (0, 256, 200, "random"),
        (1, 64, 100, "random"),
        (2, 256, 150, "benign"),
        (3, 100, 120, "benign"),
        (4, 64, 100, "benign"),
    ],
)
def test_scores_match_sklearn(seed: int, max_samples: int, trees: int, data: str) -> None:
    rng = np.random.default_rng(seed)
    make = (
        (lambda n: rng.lognormal(size=(n, D)))
        if data == "random"
        else (lambda n: _benign_like(rng, n))
    )
    forest = IsolationForest(n_estimators=trees, max_samples=max_samples, random_state=seed)
    forest.fit(make(3000))
    arrays = export_forest(forest)
    assert arrays.depth == int(np.ceil(np.log2(max_samples)))
    held_out = np.vstack([make(2000), make(500) * 40.0, _edge_rows(arrays, rng)])
    with np.errstate(over="ignore"):
        expected = -forest.score_samples(held_out)
    for chunk in (1, 7, 128, 4096):
        got = _scorer(arrays, chunk).score(held_out)
        assert got.shape == expected.shape
        assert np.max(np.abs(got - expected)) <= 1e-9
    assert np.all((got > 0) & (got <= 1))


def test_subsampled_features_are_mapped() -> None:
    rng = np.random.default_rng(5)
    X = rng.lognormal(size=(1500, D))
    forest = IsolationForest(n_estimators=60, max_features=0.5, random_state=5).fit(X)
    Y = rng.lognormal(size=(700, D)) * rng.choice([0.3, 1.0, 5.0], size=(700, 1))
    got = _scorer(export_forest(forest)).score(Y)
    assert np.max(np.abs(got + forest.score_samples(Y))) <= 1e-9


def test_one_row_and_empty_batches() -> None:
    rng = np.random.default_rng(6)
    forest = IsolationForest(n_estimators=50, random_state=6).fit(rng.normal(size=(600, D)))
    scorer = _scorer(export_forest(forest))
    x = rng.normal(size=D)
    assert scorer.score(x).shape == (1,)
    assert abs(scorer.score(x)[0] + forest.score_samples(x.reshape(1, -1))[0]) <= 1e-9
    assert scorer.score(np.empty((0, D))).shape == (0,)
    with pytest.raises(ValueError, match="feature rows"):
        scorer.score(np.zeros((3, D - 1)))
