"""``tocsin train``: fit an isolation forest on recorded windows, write arrays + card.

    tocsin train RECORDING.jsonl [RECORDING ...] --out models/baseline --seed 0
                 [--trees 200] [--max-samples 256] [--contamination-quantile 0.995]
                 [--date 2025-03-03T20:00:00Z] [--eval RECORDING.jsonl ...]

Reads the windows of every recording (``tocsin.v1.recording``), turns them into
features (``tocsin.collector.features``), fits scikit-learn's
``IsolationForest(n_estimators=trees, max_samples, random_state=seed)``,
exports the trees (``tocsin.collector.model``) and writes ``OUT.npz`` and
``OUT.json``. The card's ``threshold`` is the ``contamination-quantile`` of
the training windows' own scores, so benign windows like those trained on
exceed it rarely (about 1 - quantile of the time).

Reproducible: the same recordings, flags and library versions give
byte-identical files. The card's ``trained_at`` comes from ``--date``, else
``SOURCE_DATE_EPOCH``, else the newest window in the training data, never
from the wall clock. Recordings are named by file name and sha256 only, so
the card does not depend on the directory the command ran in.

Errors (missing or unreadable recording, no windows, bad flag values) are one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tocsin.collector.features import FEATURE_NAMES, feature_matrix
from tocsin.collector.model import CARD_FORMAT, export_forest, save_model
from tocsin.collector.score import ForestScorer
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.errors import ConfigError, TocsinError, WireError
from tocsin.v1.recording import read_recording

SCORE_DEFINITION = (
    "2 ** (-mean path length / c(max_samples)) over all trees, path length = depth of "
    "the leaf + c(leaf training samples); equals -sklearn IsolationForest.score_samples; "
    "in (0, 1], higher is more unusual"
)
EXPLAIN_DEFINITION = (
    "per tree, the feature of the last real split on the sample's path is credited with "
    "max(0, c(max_samples) - path length); mean credit per tree, features at their "
    "training median get none"
)


@dataclass(frozen=True)
class TrainingFile:
    name: str
    sha256: str
    windows: list[pb.Window]


def load_training_file(path: Path) -> TrainingFile:
    """Read one recording's windows; ``ConfigError`` names the file and the problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read recording {path}: {exc.strerror or exc}") from None
    try:
        windows = [m.window for m in read_recording(path) if m.WhichOneof("body") == "window"]
    except WireError as exc:
        raise ConfigError(f"bad recording: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"bad recording {path}: not UTF-8 JSON lines") from None
    if not windows:
        raise ConfigError(f"recording {path} holds no windows")
    return TrainingFile(path.name, hashlib.sha256(data).hexdigest(), windows)


def parse_date(text: str) -> str:
    """RFC 3339 (or YYYY-MM-DD) -> canonical UTC ``YYYY-MM-DDTHH:MM:SSZ``."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--date {text!r} is not an RFC 3339 date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _rfc3339(when)


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def trained_at(date_flag: str | None, windows: Sequence[pb.Window]) -> str:
    """``--date``, else ``SOURCE_DATE_EPOCH``, else the newest window's end."""
    if date_flag:
        return parse_date(date_flag)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return _rfc3339(datetime.fromtimestamp(int(epoch), UTC))
        except (ValueError, OverflowError):
            raise ConfigError(f"SOURCE_DATE_EPOCH={epoch!r} is not a Unix time") from None
    newest = max(w.end.seconds for w in windows)
    return _rfc3339(datetime.fromtimestamp(newest, UTC))


def _stats(scores: npt.NDArray[np.float64]) -> dict[str, float]:
    q = np.quantile(scores, [0.5, 0.9, 0.99, 0.999])
    return {
        "min": round(float(scores.min()), 6),
        "mean": round(float(scores.mean()), 6),
        "p50": round(float(q[0]), 6),
        "p90": round(float(q[1]), 6),
        "p99": round(float(q[2]), 6),
        "p999": round(float(q[3]), 6),
        "max": round(float(scores.max()), 6),
    }


def train(
    paths: Sequence[Path],
    out: Path,
    seed: int = 0,
    trees: int = 200,
    max_samples: int = 256,
    quantile: float = 0.995,
    date: str | None = None,
    eval_paths: Sequence[Path] = (),
) -> dict[str, Any]:
    """Fit, export and write ``out.npz`` + ``out.json``; returns the card written.

    ``eval_paths`` (recordings of attacks or benign jobs, e.g. tests/fixtures)
    are scored with the new model: the card's ``evaluation.recordings`` gives,
    per file, its windows, how many score above the threshold, and the highest
    score. ``make eval`` adds ``evaluation.end_to_end`` (the real chain).
    """
    from sklearn import __version__ as sklearn_version
    from sklearn.ensemble import IsolationForest

    if trees < 1:
        raise ConfigError(f"--trees must be at least 1, got {trees}")
    if max_samples < 2:
        raise ConfigError(f"--max-samples must be at least 2, got {max_samples}")
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"--contamination-quantile must be in (0, 1), got {quantile}")
    if not paths:
        raise ConfigError("no recordings given")
    files = [load_training_file(p) for p in paths]
    windows = [w for f in files for w in f.windows]
    X = feature_matrix(windows)
    if not np.isfinite(X).all():
        raise ConfigError("training windows give non-finite features (NaN or inf)")
    forest = IsolationForest(
        n_estimators=trees,
        max_samples=min(max_samples, len(windows)),
        random_state=seed,
    ).fit(X)
    arrays = export_forest(forest)
    provisional = {
        "format": CARD_FORMAT,
        "feature_names": list(FEATURE_NAMES),
        "n_trees": arrays.n_trees,
        "max_samples": arrays.max_samples,
        "depth": arrays.depth,
        "threshold": 1.0,
    }
    scores = ForestScorer(arrays, provisional).score(X)
    threshold = float(np.quantile(scores, quantile))
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "model": "isolation-forest",
        "feature_names": list(FEATURE_NAMES),
        "n_trees": arrays.n_trees,
        "max_samples": arrays.max_samples,
        "depth": arrays.depth,
        "seed": seed,
        "threshold": threshold,
        "threshold_quantile": quantile,
        "score": SCORE_DEFINITION,
        "explain": EXPLAIN_DEFINITION,
        "trained_at": trained_at(date, windows),
        "sklearn_version": sklearn_version,
        "numpy_version": np.__version__,
        "training": {
            "files": [
                {"name": f.name, "sha256": f.sha256, "windows": len(f.windows)} for f in files
            ],
            "windows": len(windows),
        },
        "training_scores": _stats(scores),
        "feature_medians": [round(float(v), 9) for v in np.median(X, axis=0)],
        "feature_iqr": [
            round(float(v), 9) for v in np.quantile(X, 0.75, axis=0) - np.quantile(X, 0.25, axis=0)
        ],
        "evaluation": evaluate(arrays, provisional, threshold, eval_paths),
    }
    save_model(out, arrays, card)
    return card


def evaluate(
    arrays: Any, card: dict[str, Any], threshold: float, paths: Sequence[Path]
) -> dict[str, Any]:
    """Per-recording scores of the new model (see ``train``)."""
    if not paths:
        return {}
    scorer = ForestScorer(arrays, {**card, "threshold": threshold})
    out = []
    for f in (load_training_file(p) for p in sorted(paths, key=lambda p: p.name)):
        scores = scorer.score(feature_matrix(f.windows))
        out.append(
            {
                "name": f.name,
                "sha256": f.sha256,
                "windows": len(f.windows),
                "above_threshold": int((scores > threshold).sum()),
                "max_score": round(float(scores.max()), 6),
            }
        )
    return {"recordings": out}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tocsin train", description="Fit the isolation forest on recorded windows."
    )
    p.add_argument("recordings", nargs="+", type=Path, metavar="RECORDING.jsonl")
    p.add_argument("--out", type=Path, required=True, help="output stem: writes OUT.npz, OUT.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trees", type=int, default=200)
    p.add_argument("--max-samples", type=int, default=256)
    p.add_argument("--contamination-quantile", type=float, default=0.995)
    p.add_argument("--date", default=None, help="trained_at (RFC 3339); default: newest window")
    p.add_argument(
        "--eval",
        nargs="+",
        type=Path,
        default=[],
        metavar="RECORDING.jsonl",
        help="recordings to score with the new model (card: evaluation)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tocsin train`` (``argv`` excludes the word ``train``)."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    out: Path = args.out
    if out.suffix in (".json", ".npz"):
        out = out.with_suffix("")
    try:
        card = train(
            args.recordings,
            out,
            seed=args.seed,
            trees=args.trees,
            max_samples=args.max_samples,
            quantile=args.contamination_quantile,
            date=args.date,
            eval_paths=args.eval,
        )
    except TocsinError as exc:
        print(f"tocsin train: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    except OSError as exc:
        print(f"tocsin train: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(
        f"{out}.json: {card['n_trees']} trees on {card['training']['windows']} windows, "
        f"threshold {card['threshold']:.4f}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
