"""The model file: an isolation forest exported as plain arrays plus a JSON card.

A model is two files with the same stem: ``NAME.npz`` (arrays, no pickle) and
``NAME.json`` (the card). Each fitted isolation tree is padded into a complete
binary tree of depth ``D = ceil(log2(max(max_samples, 2)))`` laid out in heap
order (children of node ``i`` are ``2i+1`` and ``2i+2``):

- ``feature``      int32   (T, 2**D - 1)  column compared at each internal node
- ``threshold``    float64 (T, 2**D - 1)  go right when ``x > threshold``
- ``missing_left`` uint8   (T, 2**D - 1)  where a NaN goes (1: left), as scikit-learn does
- ``leaf_value``   float64 (T, 2**D)      path length of the leaf: depth + c(n_node_samples)

A leaf of the fitted tree above depth ``D`` becomes a chain of nodes that
always go left (threshold ``+inf``, NaN left) down to depth ``D``; every
depth-``D`` leaf under it carries its value. So every sample takes exactly
``D`` steps in every tree, and the anomaly score is
``2 ** (-mean_path_length / c(max_samples))``, scikit-learn's
``-IsolationForest.score_samples`` (which compares ``float32(x) <= threshold``).

Loading never executes anything: ``np.load(allow_pickle=False)`` and ``json``.
Writing is byte-reproducible: the ``.npz`` is a stored zip with fixed
timestamps and the card is written with a fixed key order.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CARD_FORMAT = "tocsin.forest.v1"
ARRAY_NAMES = ("feature", "threshold", "missing_left", "leaf_value")
# A zip entry's timestamp: the earliest a zip can hold, so writes are reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
EULER_GAMMA = 0.5772156649015329


def average_path_length(n: int | float) -> float:
    """c(n): mean depth of an unsuccessful search in a BST of ``n`` nodes.

    The same piecewise formula scikit-learn uses: 0 for n <= 1, 1 for n == 2.
    """
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + EULER_GAMMA) - 2.0 * (n - 1.0) / n


def tree_depth(max_samples: int) -> int:
    """Depth every exported tree is padded to (scikit-learn's ``max_depth``)."""
    return (max(int(max_samples), 2) - 1).bit_length()


@dataclass(frozen=True)
class ForestArrays:
    """The padded trees of one forest (see module docstring for the layout)."""

    feature: npt.NDArray[np.int32]
    threshold: npt.NDArray[np.float64]
    missing_left: npt.NDArray[np.uint8]
    leaf_value: npt.NDArray[np.float64]
    max_samples: int

    @property
    def n_trees(self) -> int:
        return int(self.feature.shape[0])

    @property
    def depth(self) -> int:
        return tree_depth(self.max_samples)

    def validate(self, n_features: int) -> None:
        """Raise ``ValueError`` unless shapes, dtypes and values are consistent."""
        d = self.depth
        t = self.n_trees
        expected = {
            "feature": ((t, 2**d - 1), np.int32),
            "threshold": ((t, 2**d - 1), np.float64),
            "missing_left": ((t, 2**d - 1), np.uint8),
            "leaf_value": ((t, 2**d), np.float64),
        }
        for name, (shape, dtype) in expected.items():
            arr = getattr(self, name)
            if arr.shape != shape or arr.dtype != dtype:
                raise ValueError(
                    f"model array {name!r} is {arr.dtype}{arr.shape}, expected "
                    f"{np.dtype(dtype)}{shape} for {t} trees of depth {d}"
                )
        if t < 1:
            raise ValueError("model has no trees")
        if self.feature.size and (self.feature.min() < 0 or self.feature.max() >= n_features):
            raise ValueError(f"model array 'feature' names columns outside 0..{n_features - 1}")
        if np.isnan(self.threshold).any() or not np.isfinite(self.leaf_value).all():
            raise ValueError("model arrays hold NaN thresholds or non-finite leaf values")


def export_forest(forest: Any) -> ForestArrays:
    """Pad the trees of a fitted ``sklearn.ensemble.IsolationForest`` into arrays.

    Takes the estimator duck-typed (no scikit-learn import here). Column indices
    are mapped through ``estimators_features_`` when the forest subsampled
    features, exactly as scikit-learn does when it scores.
    """
    max_samples = int(forest._max_samples)
    d = tree_depth(max_samples)
    n_trees = len(forest.estimators_)
    n_internal, n_leaves = 2**d - 1, 2**d
    feature = np.zeros((n_trees, n_internal), dtype=np.int32)
    threshold = np.full((n_trees, n_internal), np.inf, dtype=np.float64)
    missing_left = np.ones((n_trees, n_internal), dtype=np.uint8)
    leaf_value = np.zeros((n_trees, n_leaves), dtype=np.float64)
    n_features = int(forest.n_features_in_)
    subsample = int(forest._max_features) != n_features
    for t, (est, cols) in enumerate(
        zip(forest.estimators_, forest.estimators_features_, strict=True)
    ):
        tree = est.tree_
        colmap = np.asarray(cols) if subsample else np.arange(n_features)
        left, right = tree.children_left, tree.children_right
        stack: list[tuple[int, int, int]] = [(0, 0, 0)]  # (sklearn node, heap slot, depth)
        while stack:
            node, slot, depth = stack.pop()
            if left[node] != -1:
                if depth >= d:
                    raise ValueError(f"tree {t} is deeper than {d}; not an isolation tree")
                feature[t, slot] = colmap[tree.feature[node]]
                threshold[t, slot] = tree.threshold[node]
                missing_left[t, slot] = 1 if _missing_go_left(tree, node) else 0
                stack.append((int(left[node]), 2 * slot + 1, depth + 1))
                stack.append((int(right[node]), 2 * slot + 2, depth + 1))
                continue
            value = depth + average_path_length(int(tree.n_node_samples[node]))
            # Every depth-d leaf under this heap slot gets the value; the padded
            # nodes above them keep threshold +inf (always left).
            first = slot
            for _ in range(d - depth):
                first = 2 * first + 1
            width = 2 ** (d - depth)
            start = first - n_internal
            leaf_value[t, start : start + width] = value
    return ForestArrays(feature, threshold, missing_left, leaf_value, max_samples)


def _missing_go_left(tree: Any, node: int) -> bool:
    flags = getattr(tree, "missing_go_to_left", None)
    return True if flags is None else bool(flags[node])


# --------------------------------------------------------------------------
# Files


def npz_bytes(arrays: ForestArrays) -> bytes:
    """The ``.npz`` file content: a stored zip of ``.npy`` members, reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in ARRAY_NAMES:
            member = io.BytesIO()
            np.lib.format.write_array(member, getattr(arrays, name), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def card_bytes(card: dict[str, Any]) -> bytes:
    """The card as written to disk: indented JSON, insertion order, one trailing newline."""
    return (json.dumps(card, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_model(stem: Path, arrays: ForestArrays, card: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``stem.npz`` and ``stem.json``; the card gets the arrays' sha256.

    Returns (card path, arrays path).
    """
    stem.parent.mkdir(parents=True, exist_ok=True)
    blob = npz_bytes(arrays)
    card = {**card, "arrays_sha256": sha256_hex(blob)}
    npz_path = stem.parent / (stem.name + ".npz")
    json_path = stem.parent / (stem.name + ".json")
    npz_path.write_bytes(blob)
    json_path.write_bytes(card_bytes(card))
    return json_path, npz_path


def parse_card(data: bytes, where: str) -> dict[str, Any]:
    """Parse and check a card's required keys; ``ValueError`` names what is wrong."""
    try:
        card = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not a JSON model card: {exc}") from None
    if not isinstance(card, dict):
        raise ValueError(f"{where}: a model card must be a JSON object")
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{where}: card format {card.get('format')!r}, expected {CARD_FORMAT!r}")
    for key, kind in (
        ("feature_names", list),
        ("n_trees", int),
        ("max_samples", int),
        ("depth", int),
        ("threshold", float),
    ):
        if not isinstance(card.get(key), kind):
            raise ValueError(f"{where}: card key {key!r} missing or not a {kind.__name__}")
    return card


def parse_arrays(data: bytes, max_samples: int, where: str) -> ForestArrays:
    """Read the ``.npz`` bytes without unpickling anything.

    Raises ``ValueError`` for a pickled member, a missing member or a non-npz file.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [n for n in ARRAY_NAMES if n not in npz.files]
            if missing:
                raise ValueError(f"{where}: model arrays missing {missing}")
            loaded = {n: np.ascontiguousarray(npz[n]) for n in ARRAY_NAMES}
    except ValueError as exc:
        # numpy raises ValueError("Object arrays cannot be loaded when allow_pickle=False")
        raise ValueError(f"{where}: refusing model arrays: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{where}: not a model .npz: {exc}") from None
    return ForestArrays(
        feature=loaded["feature"],
        threshold=loaded["threshold"],
        missing_left=loaded["missing_left"],
        leaf_value=loaded["leaf_value"],
        max_samples=max_samples,
    )
