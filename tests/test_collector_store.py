"""Both stores: dedupe by (host, boot, seq), committed seq, records; SQLite survives reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tocsin.collector.store import (
    ActionRecord,
    AlertRecord,
    SqliteStore,
    Store,
    StoredWindow,
)
from tocsin.v1.errors import ConfigError


def win(seq: int) -> StoredWindow:
    return StoredWindow(
        seq=seq,
        start_s=100.0 + seq,
        end_s=101.0 + seq,
        raw=b"\x08" + bytes([seq]),
    )


def test_dedupe_and_committed_seq(store: Store) -> None:
    store.upsert_host("h1", hostname="h1.local", agent_version="0.1", tripwire_mode="enforce")
    assert store.committed_seq("h1", "b1") == 0
    assert store.add_windows("h1", "b1", [win(1), win(2)]) == [True, True]
    assert store.add_windows("h1", "b1", [win(2), win(3)]) == [False, True]
    assert store.add_windows("h1", "b2", [win(1)]) == [True]
    assert store.committed_seq("h1", "b1") == 3
    assert store.committed_seq("h1", "b2") == 1
    assert store.committed_seq("h2", "b1") == 0
    host = store.get_host("h1")
    assert host is not None and host.windows == 4 and host.hostname == "h1.local"


def test_host_state_alerts_actions_audit(store: Store) -> None:
    store.upsert_host("h1", hostname="", agent_version="", tripwire_mode="")
    store.set_host_state("h1", isolated=True, suspended_pids=[5, 3, 5])
    host = store.get_host("h1")
    assert host is not None and host.isolated and host.suspended_pids == [3, 5]
    for i in range(3):
        store.save_alert(
            AlertRecord(
                f"a{i}",
                "h1",
                "inc",
                "critical",
                0.9,
                10.0 + i,
                1.0,
                2.0,
                ["x"],
                {"pid": 1, "name": "p", "exe": ""},
                {"i": i},
            )
        )
    assert [a.alert_id for a in store.list_alerts("h1", limit=2)] == ["a2", "a1"]
    assert store.list_alerts("other") == []
    store.add_action(ActionRecord("c1", "a1", "h1", "suspend", "collector", 1.0, "sent", pids=[3]))
    done = store.finish_action("c1", "done", "stopped", [3, 4])
    assert done is not None and done.status == "done" and done.pids == [3, 4]
    assert store.finish_action("missing", "done", "") is None
    store.audit("alice", "isolate requested", "h1")
    assert store.audit_log()[0][1:] == ("alice", "isolate requested", "h1")


def test_sqlite_commits_before_returning_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    s = SqliteStore(path)
    s.upsert_host("h1", hostname="", agent_version="", tripwire_mode="")
    s.add_windows("h1", "b1", [win(1), win(2)])
    # Another connection sees the rows at once: they are committed, not pending.
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM windows").fetchone()[0] == 2
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    s.close()
    again = SqliteStore(path)
    assert again.committed_seq("h1", "b1") == 2
    assert again.add_windows("h1", "b1", [win(2)]) == [False]
    again.close()


def test_sqlite_in_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open database"):
        SqliteStore(tmp_path / "nope" / "t.db")


def test_lists_page_newest_first_with_an_offset(store: Store) -> None:
    """How the operator API pages: ``limit`` records after skipping ``offset``, newest first."""
    for i in range(5):
        store.save_alert(
            AlertRecord(f"a{i}", "h1", f"i{i}", "warning", 0.5, 10.0 + i, 1.0, 2.0, [], None, {})
        )
        store.add_action(ActionRecord(f"c{i}", "", "h1", "suspend", "collector", 10.0 + i, "sent"))
    assert [a.alert_id for a in store.list_alerts("h1", 2, 1)] == ["a3", "a2"]
    assert [a.alert_id for a in store.list_alerts("", 10, 4)] == ["a0"]
    assert [a.action_id for a in store.list_actions("h1", 2, 3)] == ["c1", "c0"]
    assert store.list_actions("", 2, 5) == []


def test_windows_wait_unjudged_until_marked_and_come_back_for_horizons(store: Store) -> None:
    store.add_windows("h1", "b1", [win(s) for s in (1, 2, 3)])
    store.add_windows("h2", "b1", [win(1)])
    assert store.unjudged_hosts() == ["h1", "h2"]
    assert [(b, w.seq) for b, w in store.unjudged("h1")] == [("b1", 1), ("b1", 2), ("b1", 3)]
    store.mark_judged("h1", "b1", 1, 0.5)
    store.mark_judged("h1", "b1", 2, None)  # judged without a score (scoring queue full)
    assert [w.seq for _, w in store.unjudged("h1")] == [3]
    assert [w.raw for _, w in store.unjudged("h1")] == [win(3).raw]
    assert [(w.seq, w.score) for w in store.judged_since("h1", 3600.0)] == [(1, 0.5), (2, None)]
    assert [w.seq for w in store.judged_since("h1", 0.5)] == [2]  # within 0.5 s of the newest
    store.mark_judged("h1", "b1", 3, 0.4)
    store.mark_judged("h2", "b1", 1, 0.4)
    assert store.unjudged_hosts() == [] and store.unjudged("h1") == []


def test_windows_of_a_database_from_before_judgement_marks_count_as_judged(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE windows (host_id TEXT NOT NULL, boot_id TEXT NOT NULL,"
        ' seq INTEGER NOT NULL, start REAL, "end" REAL, score REAL, features TEXT, raw BLOB,'
        " UNIQUE(host_id, boot_id, seq))"
    )
    con.execute("INSERT INTO windows VALUES ('h1', 'b1', 1, 1.0, 2.0, 0.5, '[1.0]', x'08')")
    con.commit()
    con.close()
    store = SqliteStore(db)
    assert store.unjudged_hosts() == []
    assert [w.seq for w in store.judged_since("h1", 60.0)] == [1]
    store.add_windows("h1", "b1", [win(2)])
    assert [w.seq for _, w in store.unjudged("h1")] == [2]
    store.close()
