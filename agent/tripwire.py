"""The agent's own response, for evidence that needs no model.

Contract: ``Tripwire.check(window, writers)`` looks at one closed window. It
fires when one process tree wrote at least ``destroyed_threshold`` files whose
known type was destroyed, or when a canary file was touched while some process
wrote. When it fires it sets ``window.tripwire_fired`` / ``tripwire_reason``
and, by mode: ``off`` does nothing (not even mark the window), ``dry-run``
reports what it would suspend, ``enforce`` suspends the tree root through
``Actions``. It returns the ``ActionResult`` (``local=True``) to send, or None.
A tree is acted on at most once (it stays suspended until an operator says).

Default mode is ``dry-run``: an agent acts on its own only where the operator
asked for it with ``--tripwire enforce``.
"""

from __future__ import annotations

import logging
from collections import Counter

from tocsin.agent.act import Actions
from tocsin.v1 import telemetry_pb2 as pb

log = logging.getLogger(__name__)

MODES = ("off", "dry-run", "enforce")


class Tripwire:
    """Local suspend on blatant evidence (see module contract)."""

    def __init__(self, actions: Actions, mode: str = "dry-run",
                 destroyed_threshold: int = 10) -> None:
        if mode not in MODES:
            raise ValueError(f"tripwire mode must be one of {MODES}, not {mode!r}")
        self.actions = actions
        self.mode = mode
        self.destroyed_threshold = destroyed_threshold
        self._acted: set[int] = set()

    def check(self, window: pb.Window, writers: list[pb.ProcessSample]) -> pb.ActionResult | None:
        if self.mode == "off" or not writers:
            return None
        by_tree: Counter[int] = Counter()
        for s in writers:
            by_tree[s.tree_root_pid or s.pid] += s.files_type_destroyed
        root, destroyed = by_tree.most_common(1)[0]
        if destroyed >= self.destroyed_threshold:
            reason = f"type-destroyed:{destroyed} files by tree {root}"
        elif window.canary_touches:
            root = writers[0].tree_root_pid or writers[0].pid
            reason = f"canary:{window.canary_touches} touched, top writer tree {root}"
        else:
            return None
        window.tripwire_fired = True
        window.tripwire_reason = reason
        if root in self._acted:
            return None
        self._acted.add(root)
        cmd = pb.Command(id=f"local-{root}-{window.end.seconds}", kind="suspend", pids=[root],
                         dry_run=self.mode != "enforce")
        result = self.actions.run(cmd, local=True)
        log.warning("tripwire fired (%s): %s %s", reason, result.status, result.detail)
        return result
