"""The agent's own response, for evidence that needs no model.

Contract: ``Tripwire.check(window, writers)`` looks at one closed window. It
fires when one process tree wrote at least ``destroyed_threshold`` (5) files
whose known type was destroyed (summed over the tree's processes, in this
window or over the last ``horizon_s`` of windows: a benign job destroys no
type at all, so a handful is already blatant), or when a canary
file was written, deleted or renamed. The canary's tree is the one fanotify
saw writing it (``canary_trees``), else the window's biggest writing tree;
with no writer known the window is still marked, nothing is suspended. When it
fires it sets ``window.tripwire_fired`` / ``tripwire_reason`` and, by mode:
``off`` does nothing (not even mark the window), ``dry-run`` reports what it
would suspend, ``enforce`` suspends the tree root through ``Actions``. It
returns the ``ActionResult`` (``local=True``) to send, or None. A tree is acted
on at most once (it stays suspended until an operator says). It never acts on
PID 1 (or 0), on the agent itself, or on a tree whose root or writer matches
the protection list (pids, process names or executable paths): those only mark
the window with a "protected" reason.

Default mode is ``dry-run``: an agent acts on its own only where the operator
asked for it with ``--tripwire enforce``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Iterable

from tocsin.agent.act import Actions
from tocsin.agent.protect import process_ref
from tocsin.v1 import telemetry_pb2 as pb

log = logging.getLogger(__name__)

MODES = ("off", "dry-run", "enforce")


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
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"tripwire mode must be one of {MODES}, not {mode!r}")
        self.actions = actions
        self.mode = mode
        self.destroyed_threshold = destroyed_threshold
        self.protect = frozenset(protect)
        self._self_pid = os.getpid() if self_pid is None else self_pid
        self._acted: set[int] = set()
        # Per tree: (window end, files destroyed) over the last ``horizon_s``, so that
        # a tree spreading its damage over several short windows still adds up.
        self.horizon_s = horizon_s
        self._recent: dict[int, deque[tuple[float, int]]] = {}

    def _protected(self, root: int, writers: list[pb.ProcessSample]) -> str:
        """Why the tree ``root`` must not be touched ("" when it may be)."""
        if root <= 1:
            return f"pid {root} is init"
        if root == self._self_pid:
            return "the agent itself"
        for s in writers:
            if (s.tree_root_pid or s.pid) != root and s.pid != root:
                continue
            for key in (str(s.pid), s.name, s.exe):
                if key and key in self.protect:
                    return f"{key} is on the protection list"
        return "protected" if str(root) in self.protect else ""

    def check(
        self, window: pb.Window, writers: list[pb.ProcessSample], canary_trees: Iterable[int] = ()
    ) -> pb.ActionResult | None:
        if self.mode == "off" or not (writers or window.canary_touches):
            return None
        by_tree: Counter[int] = Counter()
        touched: Counter[int] = Counter()
        for s in writers:
            by_tree[s.tree_root_pid or s.pid] += s.files_type_destroyed
            touched[s.tree_root_pid or s.pid] += s.files_touched
        end_s = window.end.seconds + window.end.nanos / 1e9
        for tree, n in by_tree.items():
            if n:
                self._recent.setdefault(tree, deque(maxlen=64)).append((end_s, n))
        for tree in list(self._recent):
            recent = self._recent[tree]
            while recent and recent[0][0] < end_s - self.horizon_s:
                recent.popleft()
            if not recent:
                del self._recent[tree]
            elif tree in by_tree:  # only trees still writing in this window
                by_tree[tree] = max(by_tree[tree], sum(n for _, n in recent))
        root, destroyed = by_tree.most_common(1)[0] if by_tree else (0, 0)
        if destroyed >= self.destroyed_threshold:
            reason = f"type-destroyed:{destroyed} files by tree {root}"
        elif window.canary_touches:
            trees = sorted(canary_trees)
            root = trees[0] if trees else (touched.most_common(1)[0][0] if touched else 0)
            reason = f"canary:{window.canary_touches} touched, " + (
                f"writer tree {root}"
                if trees
                else f"top writer tree {root}"
                if root
                else "writer unknown"
            )
        else:
            return None
        window.tripwire_fired = True
        window.tripwire_reason = reason
        if not root or root in self._acted:
            return None
        why = self._protected(root, writers)
        if why:
            window.tripwire_reason = f"{reason} (not suspended: {why})"
            log.warning("tripwire fired (%s) but %s", reason, why)
            return None
        self._acted.add(root)
        cmd = pb.Command(
            id=f"local-{root}-{window.end.seconds}",
            kind="suspend",
            pids=[root],
            dry_run=self.mode != "enforce",
            processes=[process_ref(root, writers)],
        )
        result = self.actions.run(cmd, local=True)
        log.warning("tripwire fired (%s): %s %s", reason, result.status, result.detail)
        return result
