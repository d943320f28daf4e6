"""The agent's own response, for evidence that needs no model.

Contract: ``Tripwire.ruined(writer, ruined, at_s)`` is told of each file the
probes showed ruined (type destroyed, encoded random text, a random copy that
replaced its original), with the process that wrote it (fanotify), as the
evidence arrives. It fires when one process tree ruined at least
``destroyed_threshold`` (5) files within the last ``horizon_s`` (a benign job
ruins none, so a handful is already blatant), at that file: not at the close of
the window. ``Tripwire.check(window, writers)`` looks at each closed window: it
marks it when a tree that reached the threshold ruined files in it, and fires
when a canary file was written, deleted or renamed (the canary's tree is the
one fanotify saw writing it, ``canary_trees``, else the window's biggest
writing tree; with no writer known the window is still marked, nothing is
suspended). Firing sets ``window.tripwire_fired`` / ``tripwire_reason`` (for a
file, on the window being filled) and, by mode: ``off`` does nothing (not even
mark the window), ``dry-run`` reports what it would suspend, ``enforce``
suspends the tree root through ``Actions``. Both return the ``ActionResult``
(``local=True``) to send, or None. A tree is acted on at most once (it stays
suspended until an operator says). It never acts on PID 1 (or 0), on the agent
itself, or on a tree whose root or writer matches the protection list (pids,
or root-owned executables by path or file name, ``protect.listed_executable``;
never the name a process gives itself): those only mark the window with a
"protected" reason.

Mode ``follow`` (the default) is ``dry-run`` or ``enforce`` as the collector
says (``follow(mode)``, from the ``ConfigUpdate`` a collector sends an agent that
follows it: ``enforce`` when it responds in enforce mode, else ``dry-run``): the
operator chooses automatic response once, at the collector, and the agent's own
suspend, which comes tens of milliseconds before the collector's, follows that
choice. ``dry-run`` until a collector first said otherwise; the runtime keeps
the last word in its state directory, so a collector cut off later does not
disarm it. ``off``, ``dry-run`` and ``enforce`` set on the agent are never
changed by a collector.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path

from tocsin.agent.act import Actions
from tocsin.agent.protect import listed_executable, listed_paths, process_ref
from tocsin.agent.window import Ruined, RuinKind
from tocsin.v1 import telemetry_pb2 as pb

log = logging.getLogger(__name__)

MODES = ("off", "dry-run", "enforce", "follow")
FOLLOWED = ("dry-run", "enforce")  # what a followed collector may set


class Tripwire:
    """Local suspend on blatant evidence (see module contract)."""

    def __init__(
        self,
        actions: Actions,
        mode: str = "dry-run",
        destroyed_threshold: int = 5,
        protect: Iterable[str] = (),
        self_pid: int | None = None,
        horizon_s: float = 10.0,
        followed: str = "dry-run",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"tripwire mode must be one of {MODES}, not {mode!r}")
        self.actions = actions
        self.setting = mode  # as configured on the agent
        # In effect: the setting, or for "follow" what the collector last said.
        self.mode = "dry-run" if mode == "follow" else mode
        self.follow(followed)
        self.destroyed_threshold = destroyed_threshold
        self.protect = listed_paths(protect)
        self._self_pid = os.getpid() if self_pid is None else self_pid
        self._acted: set[int] = set()
        self._refused: set[int] = set()
        # Per tree: (time, kind) of each file it ruined within ``horizon_s``.
        self.horizon_s = horizon_s
        self._recent: dict[int, deque[tuple[float, RuinKind]]] = {}
        # What to mark on the window being filled: tree -> reason.
        self._marks: dict[int, str] = {}

    def follow(self, collector_mode: str) -> bool:
        """Take the mode a followed collector sends; True when the mode in effect changed.
        Anything but ``enforce`` is ``dry-run``; an agent not set to follow ignores it."""
        if self.setting != "follow":
            return False
        mode = "enforce" if collector_mode == "enforce" else "dry-run"
        changed, self.mode = mode != self.mode, mode
        return changed

    def describe(self) -> str:
        """The mode for the hello: ``follow:enforce`` when following, else the mode."""
        return f"follow:{self.mode}" if self.setting == "follow" else self.mode

    def _protected(self, root: int, writers: list[pb.ProcessSample]) -> str:
        """Why the tree ``root`` must not be touched ("" when it may be)."""
        if root <= 1:
            return f"pid {root} is init"
        if root == self._self_pid:
            return "the agent itself"
        if not self.protect:
            return ""
        pids = {root} | {s.pid for s in writers if root in (s.tree_root_pid or s.pid, s.pid)}
        for pid in sorted(pids):
            if key := listed_executable(pid, self.protect):
                return f"{key} is on the protection list"
        return ""

    def ruined(
        self, writer: pb.ProcessSample, ruined: Ruined, at_s: float
    ) -> pb.ActionResult | None:
        """One file ``writer`` ruined, as the probe showed it (see module contract)."""
        if self.mode == "off":
            return None
        root = writer.tree_root_pid or writer.pid
        recent = self._recent.setdefault(root, deque(maxlen=4096))
        recent.append((at_s, ruined.kind))
        for tree in list(self._recent):
            files = self._recent[tree]
            while files and files[0][0] < at_s - self.horizon_s:
                files.popleft()
            if not files:
                del self._recent[tree]
        if len(recent) < self.destroyed_threshold:
            return None
        kinds = ", ".join(f"{k}:{n}" for k, n in Counter(k for _, k in recent).most_common())
        reason = f"ruined:{len(recent)} files by tree {root} ({kinds})"
        result, self._marks[root] = self._fire(root, [writer], reason, int(at_s))
        return result

    def check(
        self, window: pb.Window, writers: list[pb.ProcessSample], canary_trees: Iterable[int] = ()
    ) -> pb.ActionResult | None:
        if self.mode == "off":
            return None
        marks, self._marks = self._marks, {}
        if marks:
            window.tripwire_fired = True
            window.tripwire_reason = "; ".join(marks.values())
        if not window.canary_touches:
            return None
        touched: Counter[int] = Counter()
        for s in writers:
            touched[s.tree_root_pid or s.pid] += s.files_touched
        trees = sorted(canary_trees)
        root = trees[0] if trees else (touched.most_common(1)[0][0] if touched else 0)
        reason = f"canary:{window.canary_touches} touched, " + (
            f"writer tree {root}"
            if trees
            else f"top writer tree {root}"
            if root
            else "writer unknown"
        )
        result, reason = self._fire(root, writers, reason, window.end.seconds)
        window.tripwire_fired = True
        window.tripwire_reason = "; ".join([*marks.values(), reason])
        return result

    def _fire(
        self, root: int, writers: list[pb.ProcessSample], reason: str, at_s: int
    ) -> tuple[pb.ActionResult | None, str]:
        """Suspend ``root`` (once) unless protected: (the result, the reason to mark)."""
        if not root or root in self._acted:
            return None, reason
        why = self._protected(root, writers)
        if why:
            if root not in self._refused:  # said once, not at every file
                self._refused.add(root)
                log.warning("tripwire fired (%s) but %s", reason, why)
            return None, f"{reason} (not suspended: {why})"
        self._acted.add(root)
        cmd = pb.Command(
            id=f"local-{root}-{at_s}",
            kind="suspend",
            pids=[root],
            dry_run=self.mode != "enforce",
            processes=[process_ref(root, writers)],
        )
        result = self.actions.run(cmd, local=True)
        log.warning("tripwire fired (%s): %s %s", reason, result.status, result.detail)
        return result, reason


class FollowedMode:
    """What a followed collector last said, kept in the agent's state directory (root's):
    the mode in effect at the next start, before any collector answers."""

    NAME = "tripwire-followed"

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / self.NAME

    def read(self) -> str:
        """The kept mode; ``dry-run`` when none was kept or it is not one a collector sets."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                text = f.read(64).decode("ascii", "replace").strip()
        except OSError:
            return "dry-run"
        return text if text in FOLLOWED else "dry-run"

    def write(self, mode: str) -> None:
        """Keep ``mode`` (one of ``FOLLOWED``) durably: a new file renamed into place."""
        if mode not in FOLLOWED:
            raise ValueError(f"a followed mode is one of {FOLLOWED}, not {mode!r}")
        tmp = self.path.with_name(self.NAME + ".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(mode.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
