"""Windows per second: ForestScorer against scikit-learn's score_samples, same model and data.

    python bench/bench_scorer.py [--trees 200] [--seconds 1.0]

Single core (thread pools pinned to 1 before numpy loads). Fits a forest on the
shipped benign corpus when present (random data otherwise), exports it, then
for batch sizes 1, 16, 256 and 4096 prints windows/s for both scorers and the
ratio, measured in the same run, plus the per-call latency for one window.
Best of several repeats, so a busy machine shows its least-disturbed run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402

from tocsin.collector.features import FEATURE_NAMES, feature_matrix  # noqa: E402
from tocsin.collector.model import export_forest  # noqa: E402
from tocsin.collector.score import ForestScorer  # noqa: E402
from tocsin.v1.recording import read_recording  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "models" / "training" / "benign-synthetic.jsonl"


def best_rate(fn: Callable[[], object], rows: int, seconds: float) -> tuple[float, float]:
    """(rows per second, seconds per call), best of 5 repeats of ~seconds/5 each."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(seconds / 5 / once))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return rows / best, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if CORPUS.exists():
        windows = [m.window for m in read_recording(CORPUS) if m.WhichOneof("body") == "window"]
        X = feature_matrix(windows)
    else:
        X = rng.lognormal(size=(10_000, len(FEATURE_NAMES)))
    forest = IsolationForest(n_estimators=args.trees, random_state=0).fit(X)
    arrays = export_forest(forest)
    card = {
        "feature_names": list(FEATURE_NAMES),
        "n_trees": arrays.n_trees,
        "max_samples": arrays.max_samples,
        "depth": arrays.depth,
        "threshold": 0.6,
    }
    scorer = ForestScorer(arrays, card)
    data = X[rng.integers(0, len(X), size=4096)]
    diff = float(np.max(np.abs(scorer.score(data) + forest.score_samples(data))))
    print(f"{arrays.n_trees} trees, depth {arrays.depth}, max |diff| vs sklearn = {diff:.2e}")
    print(f"{'batch':>6} {'tocsin w/s':>12} {'sklearn w/s':>12} {'ratio':>7}")
    for batch in (1, 16, 256, 4096):
        part = data[:batch]
        ours, ours_call = best_rate(lambda p=part: scorer.score(p), batch, args.seconds)
        theirs, theirs_call = best_rate(lambda p=part: forest.score_samples(p), batch, args.seconds)
        print(f"{batch:>6} {ours:>12,.0f} {theirs:>12,.0f} {ours / theirs:>7.1f}")
        if batch == 1:
            latency = (ours_call * 1e3, theirs_call * 1e3)
    print(f"one window per call: tocsin {latency[0]:.3f} ms, sklearn {latency[1]:.3f} ms")


if __name__ == "__main__":
    main()
