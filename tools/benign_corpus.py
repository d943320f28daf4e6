"""Write a seeded recording of benign windows from a town hall's file server.

    python tools/benign_corpus.py --seed 0 --out models/training/benign-synthetic.jsonl
    python tools/benign_corpus.py --seed 1 --windows 1500 --days 7 --out week.jsonl


The recording (a ``hello`` then ``window`` messages, the format of
``tocsin.v1.recording``) covers a working day of an office file server as
episodes separated by idle seconds: office saves, text edits, photo imports,
tar+gzip backups, log rotation with gzip, mass deletes, rsync mirrors, source
checkouts and SQLite churn. Counts are drawn from heavy-tailed distributions
(most seconds are quiet, a few are huge). Nothing in it destroys a known type
or writes encoded random data, apart from a very rare single corrupted file,
which is what real benign telemetry shows.

``--days D`` spreads the windows evenly over D days (a week of a server in
compressed time: each window keeps its own duration, the gaps between them
grow), ``--start-day N`` starts the recording N days after the corpus' first
window. Same seed, same bytes. It is a stand-in until recordings of real benign
servers (made through the real agent) join the training set.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.recording import message_to_line

# Monday 3 March 2025, 06:00 UTC: the corpus' first window.
START_EPOCH_S = 1_740_981_600
DEFAULT_WINDOWS = 14_000
PROBE_CAP = 64  # files the agent samples per window at most
CORRUPT_FILE_P = 0.01  # per window with probed files
ENCODED_BLOB_P = 0.005


@dataclass
class Activity:
    """One second's worth of counts; turned into a ``Window`` by ``to_window``."""

    created: int = 0
    modified: int = 0
    deleted: int = 0
    renamed: int = 0
    dirs: int = 0
    extensions: int = 0
    new_extensions: int = 0
    top_new_extension: str = ""
    top_new_extension_dirs: int = 0
    high_entropy_frac: float = 0.0
    mean_entropy: float = 0.0
    incompressible_frac: float = 0.0
    repeated_name: str = ""
    repeated_name_dirs: int = 0
    twins: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    dropped: int = 0
    type_destroyed: int = 0
    encoded_random: int = 0
    duration_s: float = 1.0


def _poisson(rng: random.Random, mean: float) -> int:
    """Poisson draw (Knuth for small means, rounded normal for large ones)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _lognormal_int(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(max(round(rng.lognormvariate(math.log(median), sigma)), lo), hi))


def _frac(rng: random.Random, lo: float, hi: float) -> float:
    return rng.uniform(lo, hi)


# --------------------------------------------------------------------------
# Episodes: each yields the activities of consecutive seconds


def idle(rng: random.Random) -> Iterator[Activity]:
    for _ in range(_lognormal_int(rng, 6, 1.2, 1, 400)):
        if rng.random() < 0.08:  # a lone touch: a lock file, a thumbnail cache
            yield Activity(
                modified=1,
                dirs=1,
                extensions=1,
                mean_entropy=_frac(rng, 2.0, 6.0),
                bytes_written=rng.randint(100, 20_000),
            )
        else:
            yield Activity()


def office_saves(rng: random.Random) -> Iterator[Activity]:
    for _ in range(_lognormal_int(rng, 8, 0.9, 1, 120)):
        saves = _poisson(rng, 1.5)
        if saves == 0:
            yield Activity()
            continue
        lock_files = _poisson(rng, 0.5)
        yield Activity(
            created=lock_files,
            modified=saves,
            deleted=_poisson(rng, 0.4 * lock_files),
            renamed=_poisson(rng, 0.3 * saves),
            dirs=min(saves + lock_files, rng.randint(1, 3)),
            extensions=rng.randint(1, min(3, saves + lock_files + 1)),
            high_entropy_frac=_frac(rng, 0.4, 1.0),
            mean_entropy=_frac(rng, 7.3, 7.97),
            incompressible_frac=_frac(rng, 0.3, 1.0),
            twins=1 if rng.random() < 0.03 else 0,
            bytes_written=saves * _lognormal_int(rng, 60_000, 1.0, 4_000, 8_000_000),
            bytes_read=_lognormal_int(rng, 80_000, 1.2, 0, 20_000_000),
        )


def text_edits(rng: random.Random) -> Iterator[Activity]:
    for _ in range(_lognormal_int(rng, 10, 0.8, 1, 200)):
        n = _poisson(rng, 1.2)
        if n == 0:
            yield Activity()
            continue
        yield Activity(
            created=_poisson(rng, 0.2),
            modified=n,
            renamed=_poisson(rng, 0.2),
            dirs=rng.randint(1, min(n, 3)),
            extensions=rng.randint(1, min(n, 3)),
            mean_entropy=_frac(rng, 3.8, 5.4),
            bytes_written=n * _lognormal_int(rng, 4_000, 1.2, 50, 2_000_000),
        )


def photo_import(rng: random.Random) -> Iterator[Activity]:
    rate = _lognormal_int(rng, 15, 0.7, 2, 80)
    for i in range(_lognormal_int(rng, 25, 0.8, 2, 300)):
        n = _poisson(rng, rate)
        yield Activity(
            created=n,
            dirs=1 if n else 0,
            extensions=min(n, rng.choice((1, 1, 1, 2))),
            new_extensions=1 if i == 0 and rng.random() < 0.05 else 0,
            high_entropy_frac=_frac(rng, 0.9, 1.0) if n else 0.0,
            mean_entropy=_frac(rng, 7.85, 7.99) if n else 0.0,
            incompressible_frac=_frac(rng, 0.85, 1.0) if n else 0.0,
            bytes_written=n * _lognormal_int(rng, 3_500_000, 0.5, 200_000, 25_000_000),
            bytes_read=n * rng.randint(0, 4_000_000),
        )


def backup_targz(rng: random.Random) -> Iterator[Activity]:
    speed = _lognormal_int(rng, 40_000_000, 0.6, 3_000_000, 250_000_000)
    for i in range(_lognormal_int(rng, 90, 0.8, 5, 900)):
        yield Activity(
            created=1 if i == 0 else 0,
            modified=0 if i == 0 else 1,
            dirs=1,
            extensions=1,
            high_entropy_frac=1.0,
            mean_entropy=_frac(rng, 7.95, 7.999),
            incompressible_frac=1.0,
            bytes_written=max(0, round(rng.gauss(speed, speed * 0.15))),
            bytes_read=max(0, round(rng.gauss(speed * 3, speed * 0.5))),
        )


def log_rotation(rng: random.Random) -> Iterator[Activity]:
    total = _lognormal_int(rng, 40, 1.2, 1, 5_000)
    while total > 0:
        n = min(total, _lognormal_int(rng, 60, 1.0, 1, 800))
        total -= n
        yield Activity(
            created=n,
            deleted=n,
            dirs=min(n, rng.randint(1, 6)),
            extensions=2,
            new_extensions=1 if rng.random() < 0.02 else 0,
            top_new_extension="gz",
            high_entropy_frac=_frac(rng, 0.85, 1.0),
            mean_entropy=_frac(rng, 7.8, 7.99),
            incompressible_frac=_frac(rng, 0.9, 1.0),
            twins=n,
            bytes_written=n * _lognormal_int(rng, 30_000, 1.2, 200, 20_000_000),
            bytes_read=n * _lognormal_int(rng, 200_000, 1.2, 1_000, 200_000_000),
            duration_s=_frac(rng, 0.3, 1.0) if n > 200 else 1.0,
        )


def mass_delete(rng: random.Random) -> Iterator[Activity]:
    total = _lognormal_int(rng, 600, 1.3, 5, 60_000)
    while total > 0:
        n = min(total, _lognormal_int(rng, 700, 0.8, 5, 6_000))
        total -= n
        yield Activity(
            deleted=n,
            dirs=min(n, _lognormal_int(rng, 15, 1.0, 1, 400)),
            extensions=min(n, rng.randint(1, 9)),
            dropped=_poisson(rng, 40) if n > 3_000 and rng.random() < 0.2 else 0,
            duration_s=_frac(rng, 0.25, 1.0) if n > 1_000 else 1.0,
        )


def rsync_mirror(rng: random.Random) -> Iterator[Activity]:
    total = _lognormal_int(rng, 800, 1.3, 10, 100_000)
    while total > 0:
        n = min(total, _lognormal_int(rng, 40, 1.0, 1, 1_500))
        total -= n
        yield Activity(
            created=n,
            renamed=n,
            modified=_poisson(rng, 0.1 * n),
            dirs=min(n, _lognormal_int(rng, 10, 1.0, 1, 200)),
            extensions=min(n, _lognormal_int(rng, 5, 0.6, 1, 25)),
            high_entropy_frac=_frac(rng, 0.2, 0.8),
            mean_entropy=_frac(rng, 5.0, 7.7),
            incompressible_frac=_frac(rng, 0.1, 0.7),
            repeated_name="Thumbs.db" if rng.random() < 0.1 else "",
            repeated_name_dirs=rng.randint(2, 12) if rng.random() < 0.1 else 0,
            bytes_written=n * _lognormal_int(rng, 250_000, 1.3, 100, 100_000_000),
            bytes_read=n * _lognormal_int(rng, 250_000, 1.3, 100, 100_000_000),
            dropped=_poisson(rng, 20) if n > 1_000 and rng.random() < 0.1 else 0,
            duration_s=_frac(rng, 0.4, 1.0) if n > 500 else 1.0,
        )


def source_checkout(rng: random.Random) -> Iterator[Activity]:
    total = _lognormal_int(rng, 2_000, 1.0, 20, 60_000)
    first = True
    while total > 0:
        n = min(total, _lognormal_int(rng, 700, 0.8, 10, 5_000))
        total -= n
        new_ext = rng.choice((0, 0, 1, 2, 3, 5)) if first else 0
        yield Activity(
            created=n,
            modified=_poisson(rng, 0.05 * n),
            dirs=min(n, _lognormal_int(rng, max(n / 12, 1), 0.5, 1, 800)),
            extensions=min(n, _lognormal_int(rng, 9, 0.5, 2, 40)),
            new_extensions=new_ext,
            top_new_extension="py" if new_ext else "",
            top_new_extension_dirs=min(n, _lognormal_int(rng, 8, 1.0, 1, 60)) if new_ext else 0,
            high_entropy_frac=_frac(rng, 0.0, 0.08),
            mean_entropy=_frac(rng, 4.2, 5.6),
            incompressible_frac=_frac(rng, 0.0, 0.05),
            repeated_name="__init__.py" if rng.random() < 0.5 else "README.md",
            repeated_name_dirs=min(n, _lognormal_int(rng, 6, 1.0, 0, 120)),
            bytes_written=n * _lognormal_int(rng, 6_000, 1.0, 30, 1_000_000),
            dropped=_poisson(rng, 30) if n > 2_500 and rng.random() < 0.2 else 0,
            duration_s=_frac(rng, 0.3, 1.0) if n > 1_000 else 1.0,
        )
        first = False


def sqlite_churn(rng: random.Random) -> Iterator[Activity]:
    for _ in range(_lognormal_int(rng, 30, 1.0, 1, 600)):
        tx = _poisson(rng, 6)
        if tx == 0:
            yield Activity()
            continue
        journal = rng.random() < 0.5
        yield Activity(
            created=1 if journal else 0,
            modified=rng.randint(1, 2),
            deleted=1 if journal else 0,
            dirs=1,
            extensions=rng.randint(1, 3),
            mean_entropy=_frac(rng, 2.5, 6.0),
            high_entropy_frac=0.0,
            incompressible_frac=_frac(rng, 0.0, 0.1),
            bytes_written=tx * _lognormal_int(rng, 8_192, 0.8, 4_096, 2_000_000),
        )


# (episode, weight): how often each kind starts after an idle gap. Office work
# fills the day; heavy jobs (mirror, rotation, purge, checkout) happen a few
# times, so their extreme seconds are rare, as on a real server.
EPISODES: tuple[tuple[Callable[[random.Random], Iterator[Activity]], float], ...] = (
    (office_saves, 40.0),
    (text_edits, 25.0),
    (sqlite_churn, 12.0),
    (photo_import, 3.0),
    (backup_targz, 1.0),
    (log_rotation, 1.0),
    (rsync_mirror, 0.7),
    (mass_delete, 0.5),
    (source_checkout, 0.4),
)


def to_window(a: Activity, seq: int, start_ns: int, rng: random.Random) -> pb.Window:
    """The wire window for one second of activity (probe counts derived and capped)."""
    w = pb.Window(seq=seq)
    end_ns = start_ns + round(a.duration_s * 1e9)
    w.start.seconds, w.start.nanos = divmod(start_ns, 1_000_000_000)
    w.end.seconds, w.end.nanos = divmod(end_ns, 1_000_000_000)
    written = a.created + a.modified + a.renamed
    probed = min(written, PROBE_CAP)
    w.events_created = a.created
    w.events_modified = a.modified * rng.randint(1, 3)
    w.events_deleted = a.deleted
    w.events_moved = a.renamed
    w.files_created, w.files_modified = a.created, a.modified
    w.files_deleted, w.files_renamed = a.deleted, a.renamed
    w.dirs_touched, w.extensions_touched = a.dirs, a.extensions
    w.new_extensions = a.new_extensions
    if a.new_extensions:
        w.top_new_extension = a.top_new_extension or "tmp"
        w.top_new_extension_dirs = max(a.top_new_extension_dirs, 1)
    w.files_probed = probed
    w.bytes_probed = probed * rng.randint(4_096, 65_536)
    w.files_high_entropy = round(probed * a.high_entropy_frac)
    w.files_incompressible = round(probed * a.incompressible_frac)
    w.mean_entropy = round(a.mean_entropy, 4) if probed else 0.0
    # Now and then one file the probe cannot match to its extension (a truncated
    # download, a half-written temporary) or one base64 blob of random bytes (a
    # signed .p7m, a key): the only such counts benign data shows, never more than 1.
    w.files_type_destroyed = a.type_destroyed or (
        1 if probed and rng.random() < CORRUPT_FILE_P else 0
    )
    w.files_encoded_random = a.encoded_random or (
        1 if probed and rng.random() < ENCODED_BLOB_P else 0
    )
    if a.repeated_name_dirs:
        w.repeated_name = a.repeated_name or "desktop.ini"
        w.repeated_name_dirs = a.repeated_name_dirs
    w.encrypted_twins = a.twins
    w.bytes_written, w.bytes_read = a.bytes_written, a.bytes_read
    w.events_dropped = a.dropped
    return w


def generate(
    seed: int, windows: int = DEFAULT_WINDOWS, days: float = 0.0, start_day: float = 0.0
) -> Iterator[pb.AgentMessage]:
    """A ``hello`` then ``windows`` windows, deterministic for ``seed``.

    Consecutive, or with ``days`` > 0 one every ``days / windows`` of a day;
    the first starts ``start_day`` days after ``START_EPOCH_S``.
    """
    rng = random.Random(seed)
    yield pb.AgentMessage(
        hello=pb.Hello(
            host_id="benign-synthetic",
            boot_id=f"synthetic-seed-{seed}",
            agent_version="benign-corpus",
            watched_roots=["/srv/partage"],
            hostname="fichiers-mairie",
            tripwire_mode="off",
        )
    )
    kinds = [k for k, _ in EPISODES]
    weights = [w for _, w in EPISODES]
    seq = 0
    clock_ns = round((START_EPOCH_S + start_day * 86400) * 1e9)
    stride_ns = round(days * 86400e9 / windows) if days > 0 else 0
    while seq < windows:
        for episode in (idle, rng.choices(kinds, weights)[0]):
            for activity in episode(rng):
                if seq >= windows:
                    break
                seq += 1
                w = to_window(activity, seq, clock_ns, rng)
                clock_ns += stride_ns or round(activity.duration_s * 1e9)
                yield pb.AgentMessage(window=w)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/benign_corpus.py", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--windows", type=int, default=DEFAULT_WINDOWS)
    parser.add_argument("--days", type=float, default=0.0, help="spread over DAYS (0: none)")
    parser.add_argument("--start-day", type=float, default=0.0, help="first window's day")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as fh:
        for msg in generate(args.seed, args.windows, args.days, args.start_day):
            fh.write(message_to_line(msg) + "\n")
    print(f"{args.out}: {args.windows} windows (seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
