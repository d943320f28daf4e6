"""The judge on hand-built windows: severity, horizons, incidents, hysteresis."""

from __future__ import annotations

import itertools

from tocsin.collector.decide import Judge, JudgeConfig
from tocsin.collector.reasons import texts
from tocsin.v1 import telemetry_pb2 as pb

T0 = 1_700_000_000


def window(seq: int, *, t: float | None = None, root: int = 100, **fields: object) -> pb.Window:
    t = T0 + seq if t is None else t
    w = pb.Window(seq=seq, **fields)  # type: ignore[arg-type]
    w.start.seconds, w.end.seconds = int(t), int(t) + 1
    w.top_writers.add(
        pid=root + 1, name="python3", exe="/usr/bin/python3", tree_root_pid=root, files_touched=10
    )
    return w


def judge(**cfg: object) -> Judge:
    ids = itertools.count(1)
    return Judge(threshold=0.6, config=JudgeConfig(**cfg), new_id=lambda: f"inc{next(ids)}")  # type: ignore[arg-type]


def test_benign_backup_high_entropy_is_warning_at_most() -> None:
    j = judge()
    sev = set()
    for seq in range(1, 40):
        w = window(
            seq,
            files_created=200,
            files_probed=50,
            files_high_entropy=50,
            files_incompressible=50,
            mean_entropy=7.99,
            bytes_written=50_000_000,
        )
        for d in j.observe("srv", w, 0.8):
            sev.add(d.severity)
    assert sev == {"warning"}


def test_in_place_encryption_is_critical_with_reasons() -> None:
    j = judge()
    w = window(
        1,
        files_modified=40,
        files_probed=40,
        files_type_destroyed=42,
        encrypted_twins=30,
        top_new_extension=".locked",
        top_new_extension_dirs=8,
        repeated_name="LISEZ-MOI.txt",
        repeated_name_dirs=6,
        events_dropped=1200,
    )
    (d,) = j.observe("srv", w, 0.71)
    assert (d.kind, d.severity, d.root_pid) == ("open", "critical", 100)
    for r in (
        "anomaly_score:0.71",
        "type_destroyed:42",
        "encrypted_twins:30",
        "new_extension_spreading:.locked:8dirs",
        "ransom_note:LISEZ-MOI.txt:6dirs",
        "events_dropped:1200",
    ):
        assert r in texts(d.reasons)
    assert d.process is not None and d.process.name == "python3"


def test_confirmer_with_normal_score_is_warning_then_strong_evidence_makes_critical() -> None:
    j = judge()
    (d,) = j.observe("srv", window(1, files_type_destroyed=3), 0.3)
    assert (d.kind, d.severity) == ("open", "warning")
    kinds = []
    for seq in range(2, 8):
        out = j.observe("srv", window(seq, files_type_destroyed=4), 0.3)
        kinds += [(d.kind, d.severity) for d in out]
    assert ("escalate", "critical") in kinds
    assert kinds.count(("escalate", "critical")) == 1


def test_slow_attack_two_files_per_second_adds_up_to_critical() -> None:
    j = judge()
    seen = []
    for seq in range(1, 61):
        w = window(seq, files_modified=2, files_type_destroyed=2)
        seen += j.observe("srv", w, 0.4)
    posted = [d for d in seen if d.posts]
    assert posted and posted[-1].severity == "critical"
    assert any(r.startswith("type_destroyed:") and ":10w" in r for r in texts(posted[-1].reasons))
    assert len({d.incident_id for d in seen}) == 1


def test_one_file_per_window_never_confirms_alone_within_a_few_windows() -> None:
    j = judge()
    out = []
    for seq in range(1, 5):
        out += j.observe("srv", window(seq, files_type_destroyed=1), 0.3)
    assert out == []


def test_canary_and_tripwire_are_critical_without_model() -> None:
    j = judge()
    (d,) = j.observe("srv", window(1, canary_touches=1), None)
    assert d.severity == "critical" and "canary_touched" in texts(d.reasons)
    (d,) = j.observe("other", window(1, tripwire_fired=True, tripwire_reason="canary"), 0.1)
    assert d.severity == "critical" and "tripwire:canary" in texts(d.reasons)


def test_one_incident_per_tree_root_and_no_repost() -> None:
    j = judge()
    a = j.observe("srv", window(1, root=100, files_type_destroyed=9), 0.9)
    b = j.observe("srv", window(2, root=100, files_type_destroyed=9), 0.9)
    c = j.observe("srv", window(3, root=200, files_type_destroyed=9), 0.9)
    assert [d.kind for d in a + b + c] == ["open", "update", "open"]
    assert a[0].incident_id == b[0].incident_id != c[0].incident_id
    assert sorted(j.open_incidents("srv")) == [("srv", 100), ("srv", 200)]


def test_incident_closes_after_quiet_window_time_and_reopens() -> None:
    j = judge(quiet_s=120.0)
    (d,) = j.observe("srv", window(1, files_type_destroyed=9), 0.9)
    assert j.observe("srv", window(60, files_created=1), 0.2) == []  # quiet, still open
    closed = j.observe("srv", window(200, files_created=1), 0.2)
    assert [x.kind for x in closed] == ["close"] and closed[0].incident_id == d.incident_id
    (again,) = j.observe("srv", window(201, files_type_destroyed=9), 0.9)
    assert again.kind == "open" and again.incident_id != d.incident_id


def test_hysteresis_keeps_incident_alive_slightly_below_threshold() -> None:
    j = judge(quiet_s=120.0)
    j.observe("srv", window(1), 0.7)
    for seq in range(2, 300, 50):
        out = j.observe("srv", window(seq), 0.58)  # above 0.6 - 0.05
        assert [d.kind for d in out] == ["update"]


def test_replay_gives_same_decisions() -> None:
    def run() -> list[tuple[str, str, tuple[str, ...]]]:
        j = judge()
        out = []
        for seq in range(1, 30):
            w = window(seq, files_type_destroyed=seq % 4, encrypted_twins=seq % 3)
            out += [(d.kind, d.severity, texts(d.reasons)) for d in j.observe("srv", w, 0.5)]
        return out

    assert run() == run() and run()


def test_blindness_is_a_warning_not_a_silence() -> None:
    """A kernel queue overflow or an unwatched directory warns even with a normal score."""
    for fields, reason in (
        ({"queue_overflows": 1}, "inotify_overflow:1"),
        ({"watch_limit_hits": 3}, "watch_limit:3"),
    ):
        (d,) = judge().observe("srv", window(1, **fields), 0.2)
        assert (d.severity, reason in texts(d.reasons)) == ("warning", True), d.reasons
    assert judge().observe("srv", window(1, files_modified=2), 0.2) == []


def test_exfiltration_staging_is_a_warning_never_critical() -> None:
    j = judge()
    sev = set()
    reasons: set[str] = set()
    for seq in range(1, 20):
        w = window(seq, files_read=600, read_dirs=45, archives_created=1, net_bytes_out=30_000_000)
        for d in j.observe("srv", w, 0.9):
            sev.add(d.severity)
            reasons |= set(texts(d.reasons))
    assert sev == {"warning"}
    assert {"read_sweep:600files:45dirs", "archive_created:1", "net_out_mb:30"} <= reasons
    # A reader that stays in a few directories is ordinary work.
    assert judge().observe("srv", window(1, files_read=600, read_dirs=3), 0.2) == []


def test_slow_read_sweep_adds_up_over_a_minute() -> None:
    j = judge()
    out = []
    for seq in range(1, 60):
        out += j.observe("srv", window(seq, files_read=40, read_dirs=6), 0.2)
    assert out and {d.severity for d in out} == {"warning"}
    assert any(r.startswith("read_sweep:") for d in out for r in texts(d.reasons))


def test_window_without_writer_joins_the_open_incident() -> None:
    """A reader sweep with no writer named does not open a second incident."""
    j = judge()
    (d,) = j.observe("srv", window(1, files_read=600, read_dirs=45), 0.9)
    no_writer = window(2, files_read=600, read_dirs=45)
    del no_writer.top_writers[:]
    out = j.observe("srv", no_writer, 0.9)
    assert [x.kind for x in out] == ["update"] and out[0].incident_id == d.incident_id
    # ... and an incident opened without a writer takes the first writer named (a
    # routine-looking one waits for it before it is posted: collector/routine.py).
    j2 = judge()
    first = window(1, files_read=600, read_dirs=45)
    del first.top_writers[:]
    assert j2.observe("srv", first, 0.9) == []
    out2 = j2.observe("srv", window(2, files_read=600, read_dirs=45), 0.9)
    assert [(x.kind, x.root_pid) for x in out2] == [("open", 100)]


def test_a_critical_incident_opened_before_its_writer_was_known_names_it_once_it_is() -> None:
    """Attribution lagged the first damage: the critical alert had nobody to suspend. The
    first window that names the writer of that tree gives a ``named`` decision (posted, so
    the responder suspends it), once."""
    j = judge()
    first = window(1, files_probed=20, files_type_destroyed=20)
    del first.top_writers[:]
    (d,) = j.observe("srv", first, 0.7)
    assert (d.kind, d.severity, d.process) == ("open", "critical", None)
    out = j.observe("srv", window(2, files_probed=20, files_type_destroyed=20), 0.7)
    assert [(x.kind, x.root_pid) for x in out] == [("named", 100)]
    assert out[0].posts and out[0].process is not None
    assert out[0].process.tree_root_pid == 100
    assert out[0].incident_id == d.incident_id
    again = j.observe("srv", window(3, files_probed=20, files_type_destroyed=20), 0.7)
    assert [x.kind for x in again] == ["update"]


def test_a_window_shared_with_a_stopped_attacker_stays_the_attackers_incident() -> None:
    """The attacker's last files share a window with a colleague's saves: the
    colleague (more files in that window) must not become a culprit."""
    j = judge()
    (d,) = j.observe("srv", window(1, files_probed=20, files_type_destroyed=20), 0.7)
    assert d.severity == "critical" and d.root_pid == 100
    w = window(2, files_created=3, top_new_extension="locked", top_new_extension_dirs=4)
    w.top_writers[0].files_touched = 1
    w.top_writers.add(pid=301, name="smbd", tree_root_pid=301, files_touched=6)
    decisions = j.observe("srv", w, 0.7)
    assert {x.root_pid for x in decisions} == {100}, decisions
    assert all(x.kind != "open" for x in decisions), decisions


def test_smb_client_of_the_writer_is_kept_checked_and_plain() -> None:
    j = judge()
    w = window(1, files_probed=20, files_type_destroyed=20)
    w.top_writers[0].smb_client_addr = "10.1.2.3"
    w.top_writers[0].smb_user = "compta\x1b[31m\nroot"
    (d,) = j.observe("srv", w, 0.7)
    assert d.process is not None
    assert d.process.smb_client_addr == "10.1.2.3"
    assert d.process.smb_user == "compta\\x1b[31m\\nroot"
    assert d.process.as_json()["smb_client_addr"] == "10.1.2.3"
    w2 = window(2, root=500, files_probed=20, files_type_destroyed=20)
    w2.top_writers[0].smb_client_addr = "10.1.2.3; reboot"
    (d2,) = j.observe("other", w2, 0.7)
    assert d2.process is not None and d2.process.smb_client_addr == ""
    assert "smb_client_addr" not in d2.process.as_json()


def test_evidence_summed_over_the_host_does_not_make_a_bystander_a_culprit() -> None:
    """A stopped attacker's last file (no writer known: it never closed) spreads its
    extension once more in a window where only a colleague wrote: that window belongs to
    the attacker's incident. A new writer with damage of its own still gets its own."""
    j = judge()
    (d,) = j.observe(
        "srv", window(1, files_probed=20, files_type_destroyed=20, encrypted_twins=20), 0.7
    )
    assert d.severity == "critical" and d.root_pid == 100
    late = window(
        2, root=300, files_created=2, top_new_extension="locked", top_new_extension_dirs=4
    )
    late.top_writers[0].smb_client_addr = "10.0.0.9"
    decisions = j.observe("srv", late, 0.7)
    assert decisions and {x.root_pid for x in decisions} == {100}, decisions
    assert all(x.kind == "update" for x in decisions), decisions
    own = window(3, root=500, files_probed=10, files_type_destroyed=10)
    (d3,) = j.observe("srv", own, 0.7)
    assert d3.kind == "open" and d3.root_pid == 500 and d3.severity == "critical"


def _paced_window(seq: int, every_s: int = 10) -> pb.Window:
    """One file ruined every ``every_s`` by tree 100, a colleague's saves (tree 200) between."""
    if seq % every_s == 0:
        return window(seq, root=100, files_modified=1, files_probed=1, files_type_destroyed=1)
    return window(seq, root=200, files_modified=2)


def _paced(j: Judge, seqs: range) -> list[tuple[int, str, str]]:
    return [(s, d.kind, d.severity) for s in seqs for d in j.observe("srv", _paced_window(s), 0.3)]


def test_a_paced_attacker_adds_up_over_its_own_tree_windows() -> None:
    # Between its files, the host's last 10 windows and last minute hold too few to confirm;
    # the tree's own last 10 windows (and its hour) do not.
    decisions = _paced(judge(), range(1, 321))
    opened = next(d for d in decisions if d[1] == "open")
    assert opened[2] == "warning" and opened[0] <= 60  # its 6th file
    escalated = next(d for d in decisions if d[1] == "escalate")
    assert escalated[2] == "critical" and escalated[0] <= 300  # 30 files by one tree


def test_resync_rebuilds_the_horizons_a_restart_forgot() -> None:
    first = judge()
    before = _paced(first, range(1, 151))
    assert [k for _, k, _ in before if k != "update"] == ["open"]
    # A new judge (a restarted collector) on the same book, given the judged windows.
    again = Judge(0.6, first.config, book=first.book)
    again.resync("srv", [_paced_window(s) for s in range(1, 151)])
    assert again.open_incidents("srv") == [("srv", 100)]
    after = _paced(again, range(151, 321))
    escalated = next(d for d in after if d[1] == "escalate")
    assert escalated[2] == "critical" and escalated[0] <= 300
