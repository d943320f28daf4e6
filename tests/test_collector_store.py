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
