"""Turn wire windows into the numeric feature vectors the model scores.

Contract: ``window_features(w)`` returns one float64 vector of length
``len(FEATURE_NAMES)``, in that order, for any ``tocsin.v1.Window`` (missing
fields read as zero). The transform is fixed: a model card names the features
it was trained on, and ``check_feature_names`` refuses a model whose list
differs, so a model can never be applied to columns it was not trained on.

Counts are turned into rates per second over the window's real duration (a
window may close early on a burst), then ``log1p``-compressed so that a
10x-larger backup is not 10x more anomalous. Fractions stay in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from tocsin.collector.store import WindowTally
from tocsin.v1 import telemetry_pb2 as pb

FEATURE_NAMES: tuple[str, ...] = (
    "files_written_rate",
    "files_deleted_rate",
    "files_renamed_rate",
    "dirs_touched_rate",
    "extensions_touched",
    "new_extensions",
    "top_new_extension_dirs",
    "high_entropy_frac",
    "type_destroyed_rate",
    "mean_entropy",
    "incompressible_frac",
    "repeated_name_dirs",
    "encrypted_twins_rate",
    "bytes_written_rate",
    "events_dropped_rate",
    "encoded_random_rate",
)

# Shortest duration a window is taken to have, so that a window closed after a
# few milliseconds does not turn three events into a huge rate.
MIN_WINDOW_S = 0.25


def window_duration_s(w: pb.Window) -> float:
    """Seconds between the window's start and end, at least ``MIN_WINDOW_S``."""
    start = w.start.seconds + w.start.nanos / 1e9
    end = w.end.seconds + w.end.nanos / 1e9
    return max(end - start, MIN_WINDOW_S)


def _rate(count: float, duration_s: float) -> float:
    return math.log1p(count / duration_s)


def window_features(w: pb.Window) -> npt.NDArray[np.float64]:
    """The feature vector of one window (see module docstring)."""
    d = window_duration_s(w)
    probed = max(w.files_probed, 1)
    files_written = w.files_created + w.files_modified + w.files_renamed
    values = (
        _rate(files_written, d),
        _rate(w.files_deleted, d),
        _rate(w.files_renamed, d),
        _rate(w.dirs_touched, d),
        math.log1p(w.extensions_touched),
        math.log1p(w.new_extensions),
        math.log1p(w.top_new_extension_dirs),
        w.files_high_entropy / probed,
        _rate(w.files_type_destroyed, d),
        w.mean_entropy,
        w.files_incompressible / probed,
        math.log1p(w.repeated_name_dirs),
        _rate(w.encrypted_twins, d),
        _rate(w.bytes_written / 1024.0, d),
        _rate(w.events_dropped + w.queue_overflows, d),
        _rate(w.files_encoded_random, d),
    )
    return np.asarray(values, dtype=np.float64)


# Each count a window adds is held to this: SQLite integers are 64-bit signed and an
# agent's uint64 (or a year of them added up) must never make a batch of windows fail.
MAX_TALLY = 2**40


def window_tally(w: pb.Window) -> WindowTally:
    """What the window adds to its host's hourly rollup: counts and evidence totals, each
    held to ``MAX_TALLY`` whatever the agent claims."""

    def held(n: int) -> int:
        return min(int(n), MAX_TALLY)

    return WindowTally(
        files_written=held(w.files_created + w.files_modified + w.files_renamed),
        files_deleted=held(w.files_deleted),
        files_destroyed=held(w.files_type_destroyed + w.encrypted_twins),
        canary_touches=held(w.canary_touches),
        events_dropped=held(w.events_dropped + w.queue_overflows),
        bytes_written=held(w.bytes_written),
    )


def feature_matrix(windows: Iterable[pb.Window]) -> npt.NDArray[np.float64]:
    """Stack the feature vectors of several windows into an (n, d) array."""
    rows = [window_features(w) for w in windows]
    if not rows:
        return np.empty((0, len(FEATURE_NAMES)), dtype=np.float64)
    return np.vstack(rows)


def check_feature_names(names: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``names`` is exactly ``FEATURE_NAMES``."""
    if tuple(names) != FEATURE_NAMES:
        raise ValueError(
            f"model features {list(names)} do not match this collector's {list(FEATURE_NAMES)}"
        )
