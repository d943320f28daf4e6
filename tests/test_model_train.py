"""tocsin train is reproducible, and the shipped baseline is what its documented command makes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sklearn

from tocsin.collector import train
from tocsin.collector.score import ForestScorer

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def _corpus(tmp: Path, seed: int = 0, windows: int | None = None) -> Path:
    out = tmp / "benign-synthetic.jsonl"
    cmd = [sys.executable, str(ROOT / "tools" / "benign_corpus.py"), "--seed", str(seed)]
    cmd += ["--out", str(out)]
    if windows is not None:
        cmd += ["--windows", str(windows)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def test_same_inputs_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    rec = _corpus(tmp_path, seed=3, windows=1500)
    outs = []
    for name in ("a", "b"):
        stem = tmp_path / name / "m"
        assert train.main([str(rec), "--out", str(stem), "--seed", "1", "--trees", "40"]) == 0
        outs.append(stem)
    for suffix in (".json", ".npz"):
        first = outs[0].with_name("m" + suffix).read_bytes()
        assert first == outs[1].with_name("m" + suffix).read_bytes()
    card = ForestScorer.load(outs[0].with_name("m.json")).card
    assert card["n_trees"] == 40 and card["seed"] == 1
    assert card["training"]["files"][0]["windows"] == 1500
    assert card["trained_at"].startswith("2025-03-03T")  # newest window, not the wall clock
    other = tmp_path / "c" / "m"
    assert train.main([str(rec), "--out", str(other), "--seed", "2", "--trees", "40"]) == 0
    assert other.with_name("m.npz").read_bytes() != outs[0].with_name("m.npz").read_bytes()


def test_date_flag_and_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _corpus(tmp_path, windows=400)
    stem = tmp_path / "m"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert train.main([str(rec), "--out", str(stem), "--trees", "10"]) == 0
    assert ForestScorer.load(tmp_path / "m.json").card["trained_at"] == "2023-11-14T22:13:20Z"
    assert train.main([str(rec), "--out", str(stem), "--trees", "10", "--date", "2024-01-02"]) == 0
    assert ForestScorer.load(tmp_path / "m.json").card["trained_at"] == "2024-01-02T00:00:00Z"


def test_shipped_corpus_is_what_the_generator_writes(tmp_path: Path) -> None:
    fresh = _corpus(tmp_path)
    assert fresh.read_bytes() == (MODELS / "training" / "benign-synthetic.jsonl").read_bytes()


def test_shipped_baseline_is_what_the_documented_command_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = ForestScorer.load(MODELS / "baseline.json").card
    if shipped["sklearn_version"] != sklearn.__version__:
        pytest.skip(f"baseline made with scikit-learn {shipped['sklearn_version']}")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    readme = (MODELS / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("tocsin train "))
    argv = line.split()[2:]
    recordings = sorted((MODELS / "training").glob("*.jsonl"))
    args = [str(p) for p in recordings] + argv[1:]  # drop the shell glob
    out_at = args.index("--out")
    args[out_at + 1] = str(tmp_path / "baseline")
    assert train.main(args) == 0
    assert (tmp_path / "baseline.npz").read_bytes() == (MODELS / "baseline.npz").read_bytes()
    # ``make eval`` adds the end-to-end figures to the shipped card; the rest is the command's.
    shipped_card = json.loads((MODELS / "baseline.json").read_text())
    end_to_end = shipped_card["evaluation"].pop("end_to_end", None)
    assert json.loads((tmp_path / "baseline.json").read_text()) == shipped_card
    if end_to_end is not None:
        assert {"attacks_detected", "median_files_ruined_before_stop"} <= set(end_to_end)


def test_eval_recordings_are_scored_into_the_card(tmp_path: Path) -> None:
    rec = _corpus(tmp_path, windows=400)
    fixtures = ROOT / "tests" / "fixtures"
    attack, benign = fixtures / "encrypt-inplace.jsonl", fixtures / "backup-targz.jsonl"
    stem = tmp_path / "m"
    argv = [str(rec), "--out", str(stem), "--trees", "20", "--eval", str(attack), str(benign)]
    assert train.main(argv) == 0
    card = ForestScorer.load(tmp_path / "m.json").card
    by_name = {r["name"]: r for r in card["evaluation"]["recordings"]}
    assert set(by_name) == {"encrypt-inplace.jsonl", "backup-targz.jsonl"}
    assert by_name["encrypt-inplace.jsonl"]["above_threshold"] >= 1
    assert by_name["encrypt-inplace.jsonl"]["max_score"] > card["threshold"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read recording"),
        ("{not json\n", "bad recording"),
        ('{"hello": {"host_id": "h"}}\n', "holds no windows"),
    ],
)
def test_bad_recordings_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    rec = tmp_path / "r.jsonl"
    if content is not None:
        rec.write_text(content)
    assert train.main([str(rec), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m.json").exists()
