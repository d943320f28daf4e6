"""Reasons: one text form, read back exactly; names holding colons survive; words from fields."""

from __future__ import annotations

import pytest

from tocsin.collector.explain import evidence_sentences
from tocsin.collector.reasons import Reason
from tocsin.collector.respond import describe

MADE = [
    Reason.counted("type_destroyed", 42),
    Reason.counted("encoded_random", 6, "10w"),
    Reason.counted("encrypted_twins", 31, "tree10w"),
    Reason.spread("new_extension_spreading", ".locked", 8),
    Reason.spread("ransom_note", "RESTORE:FILES.txt", 4),
    Reason.anomaly(0.7149),
    Reason.tripwire("ruined:12 files by tree 500 (type_destroyed:10, encoded_random:2)"),
    Reason.tripwire(""),
    Reason.counter("events_dropped", 1200),
    Reason.counter("net_out_mb", 25),
    Reason.read_sweep(600, 16),
    Reason.larger_than_usual(900),
    Reason.silence("host_silent", 61.2),
    Reason.disk_high(85.0),
    Reason("canary_touched"),
    Reason("clock_skew"),
]
TEXTS = [
    "type_destroyed:42",
    "encoded_random:6:10w",
    "encrypted_twins:31:tree10w",
    "new_extension_spreading:.locked:8dirs",
    "ransom_note:RESTORE:FILES.txt:4dirs",
    "anomaly_score:0.71",
    "tripwire:ruined:12 files by tree 500 (type_destroyed:10, encoded_random:2)",
    "tripwire:fired",
    "events_dropped:1200",
    "net_out_mb:25",
    "read_sweep:600files:16dirs",
    "larger_than_usual:900files",
    "host_silent:61.2s",
    "disk_high:85%",
    "canary_touched",
    "clock_skew",
]


def test_each_reason_has_one_text_and_reads_back_as_itself() -> None:
    assert [r.text for r in MADE] == TEXTS
    assert [Reason.parse(t) for t in TEXTS] == MADE


@pytest.mark.parametrize(
    "text", ["type_destroyed", "type_destroyed:many", "tripwire", "from_a_later_version:3", ""]
)
def test_text_of_no_known_form_is_kept_whole_and_given_no_words(text: str) -> None:
    r = Reason.parse(text)
    assert r.text == text and not r.recognised
    assert evidence_sentences([r]) == []
    assert describe([r]) == "unusual file activity"


def test_words_come_from_the_fields_not_from_splitting_text() -> None:
    note = Reason.parse("ransom_note:RESTORE:FILES.txt:4dirs")
    trip = Reason.parse("tripwire:ruined:12 files by tree 500 (type_destroyed:10)")
    assert describe([note, trip]) == (
        "a note named RESTORE:FILES.txt appeared in 4 directories; "
        "the agent's tripwire fired (ruined:12 files by tree 500 (type_destroyed:10))"
    )
    assert evidence_sentences([note]) == [
        "a file named RESTORE:FILES.txt appeared in 4 directories (a ransom note does that)"
    ]


def test_reasons_sort_by_their_text() -> None:
    assert [r.text for r in sorted(MADE)] == sorted(TEXTS)
