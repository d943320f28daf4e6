"""Every alert explains itself in words: evidence with counts, process, paths, features."""

from __future__ import annotations

from tocsin.collector.decide import Decision, ProcessInfo
from tocsin.collector.explain import explain_decision
from tocsin.collector.reasons import Reason


def test_critical_explanation_names_evidence_process_paths_and_features() -> None:
    d = Decision(
        kind="open",
        incident_id="i1",
        host_id="mairie-fs1",
        root_pid=4242,
        severity="critical",
        score=0.71,
        reasons=(
            Reason.anomaly(0.71),
            Reason.counted("type_destroyed", 14),
            Reason.counted("encrypted_twins", 30, "60s"),
            Reason.spread("ransom_note", "LISEZ-MOI.txt", 6),
        ),
        window_start_s=0.0,
        window_end_s=1.0,
        process=ProcessInfo(4243, "chiffre", "/tmp/chiffre", 4242),
        example_paths=("/srv/partage/Finances/budget.xlsx",),
    )
    text = explain_decision(d, [("type_destroyed_rate", 0.8), ("high_entropy_frac", 0.3)])
    for part in (
        "14 files that had a recognisable type",
        "within one window",
        "30 files were replaced by an encrypted copy",
        "over the last minute",
        "LISEZ-MOI.txt appeared in 6 directories",
        "chiffre (pid 4243",
        "process tree 4242",
        "/srv/partage/Finances/budget.xlsx",
        "files losing their type per second",
        "Critical",
    ):
        assert part in text, (part, text)


def test_warning_says_why_it_is_only_a_warning() -> None:
    d = Decision("open", "i2", "srv", 0, "warning", 0.66, (Reason.anomaly(0.66),), 0.0, 1.0, None)
    text = explain_decision(d, [("bytes_written_rate", 0.4)])
    assert "unusual for this server" in text and "Warning only" in text
    assert "could not be identified" in text and "bytes written per second" in text
