"""Score feature vectors with an exported isolation forest, vectorised with numpy.

``ForestScorer.score(X)`` equals scikit-learn's ``-IsolationForest.score_samples(X)``
(to 1e-9; in practice to the last few ulps) for the forest the arrays were
exported from: higher is more unusual, in (0, 1]. It walks every tree at once:
each of the ``D`` steps is ``node = 2*node + 1 + (x[feature[node]] > threshold[node])``
over an (n, T) array of node indices (see ``tocsin.collector.model``). Like
scikit-learn, ``x`` is rounded to float32 before it is compared with the
float64 thresholds, and a NaN goes where the fitted tree sent missing values.

The cost is per sample, not per call: a single window costs tens of
microseconds, so the collector may score one window at a time or a batch.
Large batches are cut into chunks of ``chunk_rows`` rows so the working set
stays in cache. Thread-safe: a scorer holds read-only arrays only.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tocsin.collector.features import FEATURE_NAMES, check_feature_names
from tocsin.collector.model import (
    ForestArrays,
    average_path_length,
    parse_arrays,
    parse_card,
    sha256_hex,
)

# Rows walked together: (trees x rows) index arrays stay in L2 cache (measured best).
DEFAULT_CHUNK_ROWS = 128
# How many features ``explain`` names at most.
EXPLAIN_TOP = 5


def _packaged(name: str) -> bytes:
    """A file of the ``tocsin.models`` package (the shipped baseline)."""
    try:
        return importlib.resources.files("tocsin.models").joinpath(name).read_bytes()
    except (NotADirectoryError, TypeError, ModuleNotFoundError):
        # An editable install can expose tocsin.models as a namespace package
        # whose path importlib.resources cannot read; look in its directories.
        import tocsin.models

        for entry in tocsin.models.__path__:
            candidate = Path(entry) / name
            if candidate.is_file():
                return candidate.read_bytes()
        raise FileNotFoundError(f"tocsin.models has no {name}") from None


class ForestScorer:
    """An exported isolation forest, ready to score (n, d) float64 feature rows.

    Attributes: ``feature_names`` (the columns, in order), ``threshold`` (the
    anomaly score above which the card calls a window anomalous), ``card``
    (the parsed JSON card).
    """

    def __init__(
        self,
        arrays: ForestArrays,
        card: dict[str, Any],
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> None:
        check_feature_names(card["feature_names"])
        arrays.validate(len(FEATURE_NAMES))
        for key, actual in (
            ("n_trees", arrays.n_trees),
            ("max_samples", arrays.max_samples),
            ("depth", arrays.depth),
        ):
            if card[key] != actual:
                raise ValueError(f"card says {key}={card[key]}, arrays have {actual}")
        self.feature_names: tuple[str, ...] = tuple(card["feature_names"])
        self.threshold: float = float(card["threshold"])
        self.card: dict[str, Any] = card
        self._arrays = arrays
        self._depth = arrays.depth
        self._n_trees = arrays.n_trees
        self._n_features = len(self.feature_names)
        self._chunk_rows = max(int(chunk_rows), 1)
        n_internal = arrays.feature.shape[1]
        self._n_internal = n_internal
        # Flat tables: entry (tree t, node i) lives at t * n_internal + i.
        self._feature_flat = np.ascontiguousarray(arrays.feature.ravel().astype(np.intp))
        self._threshold_flat = np.ascontiguousarray(arrays.threshold.ravel())
        self._missing_right_flat = arrays.missing_left.ravel() == 0
        self._leaf_flat = np.ascontiguousarray(arrays.leaf_value.ravel())
        self._tree_base = np.arange(self._n_trees, dtype=np.intp) * n_internal
        self._leaf_base = np.arange(self._n_trees, dtype=np.intp) * arrays.leaf_value.shape[1]
        # The tables above serve ``explain``; ``score`` walks the heap built here.
        self._build_heap(arrays)
        self._denominator = self._n_trees * average_path_length(arrays.max_samples)
        self._expected_path = average_path_length(arrays.max_samples)
        medians = card.get("feature_medians")
        iqr = card.get("feature_iqr")
        self._medians = np.asarray(medians, dtype=np.float64) if medians else None
        self._iqr = np.asarray(iqr, dtype=np.float64) if iqr else None

    def _build_heap(self, arrays: ForestArrays) -> None:
        """Lay all trees out as the subtrees of one 1-based heap.

        With ``L = ceil(log2(T))``, tree ``t``'s root is heap node ``2**L + t``
        and node ``g``'s children are ``2g`` and ``2g + 1``: one step is
        ``g = 2g + (x > t)``, with no per-tree offset. Thresholds are stored
        as the largest float32 not above the float64 threshold, which makes
        ``float32(x) > t32`` exactly ``float32(x) > t``.
        """
        d = self._depth
        t_count = self._n_trees
        top = 1 << (t_count - 1).bit_length()
        size = top << d
        feature = np.zeros(size, dtype=np.intp)
        threshold = np.full(size, np.inf, dtype=np.float32)
        missing_right = np.zeros(size, dtype=bool)
        with np.errstate(over="ignore"):
            t32 = arrays.threshold.astype(np.float32)
        above = t32.astype(np.float64) > arrays.threshold
        t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
        for level in range(d):
            lo, width = (1 << level) - 1, 1 << level
            start = top << level
            stop = start + t_count * width
            feature[start:stop] = arrays.feature[:, lo : lo + width].ravel()
            threshold[start:stop] = t32[:, lo : lo + width].ravel()
            missing_right[start:stop] = arrays.missing_left[:, lo : lo + width].ravel() == 0
        self._feature_heap = feature
        self._threshold_heap = threshold
        self._missing_right_heap = missing_right
        leaf = np.zeros(top << d, dtype=np.float64)
        leaf[: t_count << d] = arrays.leaf_value.ravel()
        self._leaf_heap = leaf
        self._leaf_offset = top << d
        self._roots = top + np.arange(t_count, dtype=np.intp)

    # ------------------------------------------------------------------
    # Loading

    @classmethod
    def load(cls, path: Path | None = None) -> ForestScorer:
        """Load a card (``NAME.json``) and the ``NAME.npz`` beside it.

        ``None`` loads the shipped baseline from the ``tocsin.models`` package.
        Raises ``ValueError`` (naming the file and the problem) for a card
        whose feature names differ from ``FEATURE_NAMES``, arrays of the wrong
        shape or dtype, a pickled member, or arrays whose sha256 is not the
        card's. ``OSError`` when a file is missing.
        """
        if path is None:
            card_data = _packaged("baseline.json")
            npz_data = _packaged("baseline.npz")
            where = "tocsin.models/baseline"
        else:
            path = Path(path)
            card_data = path.read_bytes()
            npz_data = path.with_suffix(".npz").read_bytes()
            where = str(path.with_suffix(""))
        card = parse_card(card_data, where)
        try:
            check_feature_names(card["feature_names"])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        expected_sha = card.get("arrays_sha256")
        if expected_sha is not None and expected_sha != sha256_hex(npz_data):
            raise ValueError(f"{where}: .npz does not match the card's arrays_sha256")
        arrays = parse_arrays(npz_data, card["max_samples"], where)
        try:
            return cls(arrays, card)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    # ------------------------------------------------------------------
    # Scoring

    def score(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Anomaly scores of the rows of ``X`` (n, d): shape (n,), in (0, 1].

        Equals ``-IsolationForest.score_samples(X)`` of the exported forest.
        """
        X64 = self._prepare(X)
        n = X64.shape[0]
        out = np.empty(n, dtype=np.float64)
        step = self._chunk_rows
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            out[lo:hi] = self._path_sum(X64[lo:hi])
        out /= -self._denominator
        return np.exp2(out, out=out)

    def _prepare(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        arr = np.asarray(X)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self._n_features:
            raise ValueError(
                f"expected (n, {self._n_features}) feature rows, got shape {arr.shape}"
            )
        # scikit-learn rounds X to float32 before comparing it with the thresholds.
        with np.errstate(over="ignore", invalid="ignore"):
            return np.ascontiguousarray(arr.astype(np.float32).astype(np.float64))

    def _walk(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        """Leaf slot (index into the forest-wide leaf level) of every (tree, row): (T, n)."""
        n, d = X.shape
        x32 = np.ascontiguousarray(X, dtype=np.float32)  # exact: X is float32-rounded
        x_flat = x32.ravel()
        row_base = np.arange(n, dtype=np.intp) * d
        roots = self._roots
        nan_rows = bool(np.isnan(x32).any())
        # Step 0: every row starts at its tree's root, so no gather is needed.
        x_root = x32[:, self._feature_heap[roots]].T
        go_right = x_root > self._threshold_heap[roots][:, None]
        if nan_rows:
            nan = np.isnan(x_root)
            go_right[nan] = np.broadcast_to(self._missing_right_heap[roots][:, None], nan.shape)[
                nan
            ]
        node = roots[:, None] * 2 + go_right
        cols = np.empty_like(node)
        xv = np.empty(node.shape, dtype=np.float32)
        tv = np.empty(node.shape, dtype=np.float32)
        for _ in range(self._depth - 1):
            # mode="clip": indices are in range by construction, and numpy buffers
            # ``out`` only in the default mode="raise" (an extra copy per step).
            self._feature_heap.take(node, out=cols, mode="clip")
            cols += row_base
            x_flat.take(cols, out=xv, mode="clip")
            self._threshold_heap.take(node, out=tv, mode="clip")
            np.greater(xv, tv, out=go_right)
            if nan_rows:
                nan = np.isnan(xv)
                go_right[nan] = self._missing_right_heap.take(node[nan])
            node += node
            node += go_right
        node -= self._leaf_offset
        leaves: npt.NDArray[np.intp] = node
        return leaves

    def _path_sum(self, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Sum over trees of each row's path length (depth + c(leaf size))."""
        leaves = self._walk(X)
        sums: npt.NDArray[np.float64] = self._leaf_heap.take(leaves).sum(axis=0)
        return sums

    # ------------------------------------------------------------------
    # Explanation

    def explain(self, x: npt.ArrayLike, top: int = EXPLAIN_TOP) -> list[tuple[str, float]]:
        """The features that made this sample easy to isolate, best first.

        Per tree, the last real split on the sample's path is the one that cut
        it off from the rest of the training sample; that split's feature is
        credited with how much shorter than average the path was
        (``c(max_samples) - path_length``, when positive). Credits are summed
        over trees and divided by the number of trees: a feature's value is the
        mean path shortening, in splits, that it accounts for. Features with no
        credit are left out (a typical window explains nothing). Cost: one walk
        of one sample through all trees.

        When the card stores training medians and IQRs, each entry's feature is
        also one that moved away from them (credit is kept only where the value
        differs from the training median), so a feature that merely happened
        to be split last while sitting at its usual value is not blamed.
        """
        X64 = self._prepare(x)
        if X64.shape[0] != 1:
            raise ValueError("explain takes one sample")
        row = X64[0]
        t_idx = np.arange(self._n_trees)
        node = np.zeros(self._n_trees, dtype=np.intp)
        last_feature = np.full(self._n_trees, -1, dtype=np.intp)
        for _ in range(self._depth):
            idx = self._tree_base + node
            f = self._feature_flat[idx]
            thr = self._threshold_flat[idx]
            xv = row[f]
            right = xv > thr
            nan = np.isnan(xv)
            right[nan] = self._missing_right_flat[idx][nan]
            real = np.isfinite(thr)
            last_feature[real] = f[real]
            node = 2 * node + 1 + right
        path = self._leaf_flat[self._leaf_base + node - self._n_internal]
        deficit = np.maximum(self._expected_path - path, 0.0)
        credit = np.zeros(self._n_features, dtype=np.float64)
        has = last_feature >= 0
        np.add.at(credit, last_feature[has], deficit[t_idx[has]])
        credit /= self._n_trees
        if self._medians is not None and self._medians.shape == (self._n_features,):
            credit[row == self._medians] = 0.0
        order = np.argsort(-credit, kind="stable")
        return [
            (self.feature_names[i], round(float(credit[i]), 6))
            for i in order[:top]
            if credit[i] > 0.0
        ]

    def robust_z(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(x - training median) / training IQR per feature (IQR floored at 1e-6).

        A cheap, model-free companion to ``explain``; zeros when the card has
        no medians.
        """
        X64 = self._prepare(x)
        if self._medians is None or self._iqr is None:
            return np.zeros_like(X64)
        return (X64 - self._medians) / np.maximum(self._iqr, 1e-6)
