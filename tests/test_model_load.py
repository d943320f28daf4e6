"""Loading refuses what is not a tocsin model; the shipped baseline separates attack from office."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tocsin.collector.features import FEATURE_NAMES, window_features
from tocsin.collector.model import card_bytes, export_forest, npz_bytes, save_model
from tocsin.collector.score import ForestScorer
from tocsin.v1 import telemetry_pb2 as pb

D = len(FEATURE_NAMES)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    forest = IsolationForest(n_estimators=20, max_samples=64, random_state=0)
    arrays = export_forest(forest.fit(rng.normal(size=(300, D))))
    card = {
        "format": "tocsin.forest.v1",
        "feature_names": list(FEATURE_NAMES),
        "n_trees": 20,
        "max_samples": 64,
        "depth": 6,
        "threshold": 0.6,
    }
    json_path, _ = save_model(tmp_path / "m", arrays, card)
    return json_path


def _card(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_good_model_loads(model: Path) -> None:
    scorer = ForestScorer.load(model)
    assert scorer.feature_names == FEATURE_NAMES and scorer.threshold == 0.6


def test_wrong_feature_names_are_refused(model: Path) -> None:
    card = _card(model)
    card["feature_names"] = [*FEATURE_NAMES[:-1], "something_else"]
    model.write_bytes(card_bytes(card))
    with pytest.raises(ValueError, match="do not match"):
        ForestScorer.load(model)


def _rewrite_npz(model: Path, **replace: np.ndarray) -> None:
    npz = model.with_suffix(".npz")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(replace)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    npz.write_bytes(buf.getvalue())
    card = _card(model)
    card.pop("arrays_sha256")  # a card without a digest still gets shape checks
    model.write_bytes(card_bytes(card))


def test_wrong_shapes_are_refused(model: Path) -> None:
    _rewrite_npz(model, leaf_value=np.zeros((20, 32)))
    with pytest.raises(ValueError, match="leaf_value"):
        ForestScorer.load(model)


def test_card_and_arrays_disagreeing_is_refused(model: Path) -> None:
    card = _card(model)
    card["n_trees"] = 21
    model.write_bytes(card_bytes(card))
    with pytest.raises(ValueError, match="n_trees"):
        ForestScorer.load(model)


def test_feature_index_out_of_range_is_refused(model: Path) -> None:
    with np.load(model.with_suffix(".npz")) as z:
        feature = z["feature"].copy()
    feature[0, 0] = D
    _rewrite_npz(model, feature=feature)
    with pytest.raises(ValueError, match="columns outside"):
        ForestScorer.load(model)


def test_pickled_arrays_are_refused(model: Path) -> None:
    with np.load(model.with_suffix(".npz")) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["threshold"] = np.array([object()] * 3, dtype=object)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # pickles the object array
    model.with_suffix(".npz").write_bytes(buf.getvalue())
    card = _card(model)
    card.pop("arrays_sha256")
    model.write_bytes(card_bytes(card))
    with pytest.raises(ValueError, match="refusing model arrays"):
        ForestScorer.load(model)


def test_tampered_arrays_fail_the_digest(model: Path) -> None:
    npz = model.with_suffix(".npz")
    data = bytearray(npz.read_bytes())
    data[-40] ^= 1
    npz.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="arrays_sha256"):
        ForestScorer.load(model)


def test_npz_is_reproducible_and_plain(model: Path) -> None:
    scorer = ForestScorer.load(model)
    blob = npz_bytes(scorer._arrays)
    assert blob == model.with_suffix(".npz").read_bytes()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


# --------------------------------------------------------------------------
# The shipped baseline


def _window(**fields: float) -> np.ndarray:
    w = pb.Window(seq=1)
    w.start.seconds, w.end.seconds = 1_000, 1_001
    for name, value in fields.items():
        setattr(w, name, value)
    return window_features(w)


ENCRYPTION = {
    "in place": _window(
        files_modified=150,
        dirs_touched=12,
        extensions_touched=6,
        files_probed=64,
        files_high_entropy=64,
        files_type_destroyed=60,
        mean_entropy=7.99,
        files_incompressible=64,
        bytes_written=3_000_000,
    ),
    "copy + notes": _window(
        files_created=100,
        files_deleted=100,
        dirs_touched=20,
        extensions_touched=7,
        new_extensions=1,
        top_new_extension_dirs=20,
        files_probed=64,
        files_high_entropy=60,
        mean_entropy=7.95,
        files_incompressible=60,
        repeated_name_dirs=20,
        encrypted_twins=100,
        bytes_written=2_000_000,
    ),
    "base64": _window(
        files_modified=100,
        dirs_touched=10,
        extensions_touched=6,
        files_probed=64,
        files_encoded_random=60,
        files_type_destroyed=60,
        mean_entropy=6.0,
        bytes_written=2_000_000,
    ),
}
BENIGN = {
    "idle": _window(),
    "office save": _window(
        files_modified=2,
        dirs_touched=1,
        extensions_touched=1,
        files_probed=2,
        files_high_entropy=2,
        mean_entropy=7.8,
        files_incompressible=1,
        bytes_written=120_000,
    ),
    "text edit": _window(
        files_modified=1,
        dirs_touched=1,
        extensions_touched=1,
        files_probed=1,
        mean_entropy=4.5,
        bytes_written=3_000,
    ),
}


def test_baseline_flags_encryption_and_not_office_work() -> None:
    scorer = ForestScorer.load()
    for name, x in ENCRYPTION.items():
        assert scorer.score(x)[0] > scorer.threshold, name
    for name, x in BENIGN.items():
        assert scorer.score(x)[0] < scorer.threshold, name
    reasons = [f for f, _ in scorer.explain(ENCRYPTION["in place"])]
    assert "type_destroyed_rate" in reasons[:3]
    assert all(v > 0 for _, v in scorer.explain(ENCRYPTION["copy + notes"]))
