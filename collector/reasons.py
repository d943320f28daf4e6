"""Why a window (or a host) raised something: one typed value, one text form.

Contract: a ``Reason`` is a frozen value: its ``kind`` and the typed fields that
kind uses (the rest keep their defaults). ``text`` renders it in the short
machine-readable form the webhook body's ``reasons``, the store and the CLI
carry (``type_destroyed:42:60s``, ``ransom_note:LISEZ-MOI.txt:6dirs``,
``tripwire:<the agent's own words>``); ``Reason.parse(text)`` reads that form
back (alerts and incidents already stored) and ``Reason.parse(r.text) == r``
for every reason made by the constructors below. Text that is not one of the
known forms (another version's reason, a damaged row) parses to an
unrecognised reason (``kind`` "") whose ``detail`` keeps it whole, so
``parse(t).text == t`` always.
Reasons order by their text (how alerts list them).

Kinds and their fields:

=========================  ==========================  ============================
kind                       fields                      text
=========================  ==========================  ============================
type_destroyed,            files, horizon ("" for one  ``type_destroyed:42``,
encoded_random,            window, else "10w", "60s",  ``encoded_random:6:10w``
encrypted_twins            "1h", "tree10w")
new_extension_spreading,   name, dirs                  ``ransom_note:NOTE.txt:6dirs``
ransom_note
anomaly_score              score (2 decimals)          ``anomaly_score:0.71``
tripwire                   detail (the agent's words)  ``tripwire:canary``
events_dropped,            count                       ``events_dropped:1200``
inotify_overflow,
watch_limit,
archive_created,
net_out_mb (count in MB)
read_sweep                 files, dirs                 ``read_sweep:600files:16dirs``
larger_than_usual          files                       ``larger_than_usual:900files``
host_silent, host_back     span_s                      ``host_silent:61.2s``
disk_high                  percent                     ``disk_high:81.5%``
canary_touched,            -                           ``canary_touched``
clock_skew
=========================  ==========================  ============================
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

# Counted kinds of destruction, judged over one window or a horizon.
COUNTED = ("type_destroyed", "encoded_random", "encrypted_twins")
SPREAD = ("new_extension_spreading", "ransom_note")
COUNTS = ("events_dropped", "inotify_overflow", "watch_limit", "archive_created", "net_out_mb")
SPANS = ("host_silent", "host_back")
BARE = ("canary_touched", "clock_skew")


@functools.total_ordering
@dataclass(frozen=True)
class Reason:
    kind: str
    files: int = 0
    horizon: str = ""
    name: str = ""
    dirs: int = 0
    count: int = 0
    score: float = 0.0
    span_s: float = 0.0
    percent: float = 0.0
    detail: str = ""

    # ------------------------------------------------------------ constructors

    @classmethod
    def counted(cls, kind: str, files: int, horizon: str = "") -> Reason:
        return cls(kind, files=files, horizon=horizon)

    @classmethod
    def spread(cls, kind: str, name: str, dirs: int) -> Reason:
        return cls(kind, name=name, dirs=dirs)

    @classmethod
    def anomaly(cls, score: float) -> Reason:
        return cls("anomaly_score", score=round(score, 2))

    @classmethod
    def tripwire(cls, detail: str) -> Reason:
        return cls("tripwire", detail=detail or "fired")

    @classmethod
    def counter(cls, kind: str, count: int) -> Reason:
        return cls(kind, count=count)

    @classmethod
    def read_sweep(cls, files: int, dirs: int) -> Reason:
        return cls("read_sweep", files=files, dirs=dirs)

    @classmethod
    def larger_than_usual(cls, files: int) -> Reason:
        return cls("larger_than_usual", files=files)

    @classmethod
    def silence(cls, kind: str, span_s: float) -> Reason:
        return cls(kind, span_s=span_s)

    @classmethod
    def disk_high(cls, percent: float) -> Reason:
        return cls("disk_high", percent=percent)

    # ------------------------------------------------------------ text

    @property
    def text(self) -> str:
        """The one text form (see the module's table)."""
        k = self.kind
        if not k:
            return self.detail
        if k == "tripwire":
            return f"{k}:{self.detail}"
        if k in BARE:
            return k
        if k in COUNTED:
            return f"{k}:{self.files}:{self.horizon}" if self.horizon else f"{k}:{self.files}"
        if k in SPREAD:
            return f"{k}:{self.name}:{self.dirs}dirs"
        if k == "anomaly_score":
            return f"{k}:{self.score:.2f}"
        if k in COUNTS:
            return f"{k}:{self.count}"
        if k == "read_sweep":
            return f"{k}:{self.files}files:{self.dirs}dirs"
        if k == "larger_than_usual":
            return f"{k}:{self.files}files"
        if k in SPANS:
            return f"{k}:{self.span_s:g}s"
        if k == "disk_high":
            return f"{k}:{self.percent:g}%"
        return k

    @property
    def recognised(self) -> bool:
        """False for text that is none of the known forms (kept whole in ``detail``)."""
        return bool(self.kind)

    def __str__(self) -> str:
        return self.text

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Reason):
            return NotImplemented
        return self.text < other.text

    @classmethod
    def parse(cls, text: str) -> Reason:
        """The reason ``text`` is the form of (see the module contract); never raises."""
        kind, _, rest = text.partition(":")
        try:
            reason = cls._parse(kind, rest)
        except ValueError:
            reason = None
        if reason is None or reason.text != text:
            return cls("", detail=text)
        return reason

    @classmethod
    def _parse(cls, kind: str, rest: str) -> Reason | None:
        if kind == "tripwire":
            return cls.tripwire(rest)
        if kind in BARE:
            return cls(kind)
        if kind in COUNTED:
            files, _, horizon = rest.partition(":")
            return cls.counted(kind, int(files), horizon)
        if kind in SPREAD:
            # A name may hold a colon (a file name can): the directories come last.
            name, _, dirs = rest.rpartition(":")
            return cls.spread(kind, name, int(dirs.removesuffix("dirs")))
        if kind == "anomaly_score":
            return cls.anomaly(float(rest))
        if kind in COUNTS:
            return cls.counter(kind, int(rest))
        if kind == "read_sweep":
            files, _, dirs = rest.partition(":")
            return cls.read_sweep(int(files.removesuffix("files")), int(dirs.removesuffix("dirs")))
        if kind == "larger_than_usual":
            return cls.larger_than_usual(int(rest.removesuffix("files")))
        if kind in SPANS:
            return cls.silence(kind, float(rest.removesuffix("s")))
        if kind == "disk_high":
            return cls.disk_high(float(rest.removesuffix("%")))
        return None


def texts(reasons: tuple[Reason, ...] | list[Reason]) -> list[str]:
    """The reasons' text forms, in their order (what a webhook body and the store carry)."""
    return [r.text for r in reasons]


def parse_all(texts_: list[str] | tuple[str, ...]) -> list[Reason]:
    """Reasons read back from their text forms (stored alerts, incidents)."""
    return [Reason.parse(t) for t in texts_]
