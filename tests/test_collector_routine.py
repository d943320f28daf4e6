"""Recurring benign jobs: the same nightly job warns on its first night only, per host."""

from __future__ import annotations

import itertools

from tocsin.collector.backends import open_database
from tocsin.collector.decide import Decision, Judge
from tocsin.collector.reasons import texts
from tocsin.collector.routine import RoutineJobs, SqliteRoutineBook
from tocsin.v1 import telemetry_pb2 as pb

NIGHT_0 = 1_796_000_000 - 1_796_000_000 % 86_400 + 2 * 3600  # 02:00 UTC
DAY = 86_400
BACKUP = "tar czf /srv/sauvegardes/partage-2026-12-01.tar.gz /srv/partage"


def sweep(seq: int, t: float, cmdline: str = BACKUP, root: int = 4000, **fields: int) -> pb.Window:
    """A window of a backup sweeping the share: 200 files read in 20 directories."""
    w = pb.Window(seq=seq, files_read=200, read_dirs=20, files_created=1, **fields)  # type: ignore[arg-type]
    w.start.seconds, w.end.seconds = int(t), int(t) + 1
    w.top_writers.add(
        pid=root,
        name=cmdline.split()[0],
        exe=f"/usr/bin/{cmdline.split()[0]}",
        tree_root_pid=root,
        files_touched=1,
        cmdline=cmdline,
    )
    return w


class Night:
    def __init__(self, judge: Judge, host: str = "mairie") -> None:
        self.judge, self.host = judge, host
        self.seq = itertools.count(1)

    def run(self, start_s: float, windows: int = 10, **kw: object) -> list[Decision]:
        """A job's windows from ``start_s``, then quiet windows until its incident closed."""
        out: list[Decision] = []
        for i in range(windows):
            out += self.judge.observe(self.host, sweep(next(self.seq), start_s + i, **kw), 0.3)  # type: ignore[arg-type]
        for i in range(1, 30):
            quiet = pb.Window(seq=next(self.seq))
            quiet.start.seconds = quiet.end.seconds = int(start_s + windows + 10 * i)
            out += self.judge.observe(self.host, quiet, 0.1)
        return out


def posted(decisions: list[Decision]) -> list[str]:
    return [d.severity for d in decisions if d.posts]


def _judge(routine: RoutineJobs | None = None) -> Judge:
    ids = itertools.count(1)
    return Judge(threshold=0.6, new_id=lambda: f"inc{next(ids)}", routine=routine)


def test_the_same_nightly_job_warns_on_its_first_night_only() -> None:
    nights = Night(_judge())
    got = [posted(nights.run(NIGHT_0 + n * DAY + 60 * n)) for n in range(3)]
    assert got == [["warning"], [], []]


def test_another_hour_a_much_bigger_run_or_another_process_still_warns() -> None:
    nights = Night(_judge())
    assert posted(nights.run(NIGHT_0)) == ["warning"]
    # The same job at 14:00, not at 02:00: not the nightly run.
    assert posted(nights.run(NIGHT_0 + DAY + 12 * 3600)) == ["warning"]
    # A process never seen before sweeping the share at the backup's hour: staging.
    stager = "python3 /tmp/.x/stage.py --out /srv/partage/Temp/export.zip"
    assert posted(nights.run(NIGHT_0 + 2 * DAY, cmdline=stager, root=5000)) == ["warning"]
    # The nightly job four times its usual size: posted once it outgrew it.
    big = nights.run(NIGHT_0 + 3 * DAY, windows=40)
    assert posted(big) == ["warning"]
    assert any(r.startswith("larger_than_usual:") for d in big if d.posts for r in texts(d.reasons))


def test_a_routine_run_that_destroys_is_posted_critical() -> None:
    nights = Night(_judge())
    assert posted(nights.run(NIGHT_0)) == ["warning"]
    # Next night the same job starts quietly, then destroys types: critical, posted.
    got = nights.run(NIGHT_0 + DAY, windows=3)
    assert posted(got) == []
    w = sweep(999, NIGHT_0 + DAY + 4, files_type_destroyed=8, files_probed=8)
    decisions = nights.judge.observe("mairie", w, 0.9)
    assert posted(decisions) == ["critical"]


def test_the_memory_is_per_host_and_survives_a_restart(db_location: str) -> None:
    first_db = open_database(db_location)
    first = Night(_judge(RoutineJobs(SqliteRoutineBook(first_db))))
    assert posted(first.run(NIGHT_0)) == ["warning"]
    first_db.close()
    # A new collector on the same database: the job is known on this host only.
    second_db = open_database(db_location)
    again = _judge(RoutineJobs(SqliteRoutineBook(second_db)))
    assert posted(Night(again).run(NIGHT_0 + DAY)) == []
    assert posted(Night(again, host="ecole").run(NIGHT_0 + DAY)) == ["warning"]
    second_db.close()


def test_a_sweep_whose_writer_is_named_late_is_judged_by_it() -> None:
    """tar reads the share for a while and closes its archive only at the end: the warning
    waits for the writer, then is the learned nightly job (silent) or is posted. A reader
    never named (staging that only reads and sends) is posted after ``unnamed_wait_s``."""
    j = _judge()
    seq = itertools.count(1)

    def night(start_s: float, named: bool) -> list[Decision]:
        out: list[Decision] = []
        for i in range(5):
            w = sweep(next(seq), start_s + i)
            if not named or i < 4:
                del w.top_writers[:]
            out += j.observe("mairie", w, 0.3)
        for i in range(1, 30):
            quiet = pb.Window(seq=next(seq))
            quiet.start.seconds = quiet.end.seconds = int(start_s + 5 + 10 * i)
            out += j.observe("mairie", quiet, 0.1)
        return out

    assert posted(night(NIGHT_0, named=True)) == ["warning"]
    assert posted(night(NIGHT_0 + DAY, named=True)) == []
    unnamed = night(NIGHT_0 + 2 * DAY, named=False)
    assert posted(unnamed) == ["warning"]
    first = next(d for d in unnamed if d.posts)
    assert first.window_end_s - (NIGHT_0 + 2 * DAY) >= j.config.unnamed_wait_s
