"""The running agent: watch -> window (probe, attribute, tripwire) -> spool -> ship, and obey.

Contract: ``Agent(config)`` builds every part from an ``AgentConfig`` (the
collector's addresses and the DNS resolvers are pinned here, once);
``run()`` re-applies a persisted isolation and client blocks, starts the
threads (the firewall's watcher among them) and blocks
until ``request_stop()`` (signal handlers call it), then sends Goodbye,
flushes and returns 0. Under systemd (``$NOTIFY_SOCKET``) it says READY=1 only
once the watches are in place and the metrics endpoint (``metrics``) is
serving, pings WATCHDOG=1 while its worker threads live and the window thread
goes round its loop (``WINDOW_STALL_S``), and says STOPPING=1.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tocsin.agent import limits, sdnotify
from tocsin.agent.act import Actions
from tocsin.agent.attribute import Attributor
from tocsin.agent.canary import plant
from tocsin.agent.drill import DrillKey
from tocsin.agent.firewall import Firewall
from tocsin.agent.forks import ForkWatch
from tocsin.agent.metrics import AgentMetrics
from tocsin.agent.ruleset import pin_addresses, system_resolvers
from tocsin.agent.ship import HelloInfo, Shipper
from tocsin.agent.smb import SmbSessions
from tocsin.agent.spool import WindowSpool
from tocsin.agent.tripwire import FollowedMode, Tripwire
from tocsin.agent.watch import FileWatcher
from tocsin.agent.window import Ruined, WindowLoop, scan_tree
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.recording import Recorder
from tocsin.v1.text import wire_text

log = logging.getLogger(__name__)

# Onset: a window that follows a quiet one (a full-length window with fewer
# than ONSET_EVENTS events) closes as soon as ONSET_EVENTS events arrived, so
# the first files of a burst reach the collector within tens of milliseconds
# instead of up to a window later. Any other window keeps the full
# BURST_EVENTS budget: a sustained storm costs one short window per quiet spell.
ONSET_EVENTS = 6
# While a burst is under way the window thread looks at the event queue this
# often (it sleeps until the first event of a window, so idle costs nothing; an
# onset window wakes with each batch of events instead, to close at the last).
ONSET_POLL_S = 0.04
# Destruction: after a window in which files lost their type, turned into
# encoded random data, were replaced by a random copy, or a canary was touched,
# windows last FAST_WINDOW_S until one shows none: the collector sees the damage
# grow every tenth of a second instead of once a second (the tripwire acts per
# file, whatever the window).
FAST_WINDOW_S = 0.1
# Watchdog: a window thread that has not gone round its loop for this long past
# its window length is hung (a probe or attribution call that never returns);
# the pings stop and systemd restarts the agent after WatchdogSec. A slow disk
# under a storm spends well under a second on a window's probe budget.
WINDOW_STALL_S = 10.0


@dataclass
class AgentConfig:
    # HOST:PORT of each collector, tried in turn (``tocsin.agent.ship``).
    collectors: list[str]
    watch: list[str]
    host_id: str
    state_dir: Path
    insecure: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    record: Path | None = None
    tripwire: str = "follow"
    window_s: float = 1.0
    allow: list[str] = field(default_factory=list)
    # DNS servers kept reachable when isolated; empty: those of /etc/resolv.conf at start.
    resolvers: list[str] = field(default_factory=list)
    canaries: list[str] = field(default_factory=list)
    # Plant the default decoy documents (tocsin.agent.canary) in every watched root.
    plant_canaries: bool = False
    # Never suspended by the local tripwire: pids, process names or executable paths.
    protect: list[str] = field(default_factory=list)
    spool_max_windows: int = 100_000
    spool_max_bytes: int = 256 * 1024 * 1024
    # HOST:PORT of the Prometheus /metrics endpoint; empty: off.
    metrics: str = ""
    log_format: str = "text"
    # Samba's smb.conf, for its session data (smbstatus -s); empty: Samba's default.
    smb_conf: str = ""

    @property
    def collector_host_ports(self) -> list[tuple[str, int]]:
        return [
            (host.strip("[]"), int(port))
            for host, _, port in (c.rpartition(":") for c in self.collectors)
        ]


class Agent:
    """All agent threads wired together (see module contract)."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.boot_id = os.urandom(16).hex()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        pinned: list[str] = []
        for host, _ in cfg.collector_host_ports:
            try:
                pinned += pin_addresses(host)
            except OSError as exc:
                log.warning(
                    "cannot resolve the collector %s now (%s): isolation keeps the "
                    "addresses pinned last time if no collector resolves",
                    host,
                    exc,
                )
        ports = sorted({port for _, port in cfg.collector_host_ports})
        self.firewall = Firewall(
            cfg.state_dir,
            tuple(dict.fromkeys(pinned)),
            ports,
            cfg.allow,
            cfg.resolvers or system_resolvers(),
        )
        self.actions = Actions(cfg.state_dir, self.firewall)
        self.spool = WindowSpool(
            cfg.state_dir / "spool.sqlite", cfg.spool_max_windows, cfg.spool_max_bytes
        )
        ignore = [str(cfg.state_dir)] + ([str(cfg.record)] if cfg.record else [])
        canary_paths = [os.path.realpath(c) for c in cfg.canaries]
        if cfg.plant_canaries:
            canary_paths += plant(cfg.watch)
        for c in cfg.canaries:
            if not os.path.exists(c):
                canary_paths += plant([os.path.dirname(c) or "."], (os.path.basename(c),))
        exts, dirs = scan_tree(cfg.watch)
        limit = limits.ensure_max_user_watches(dirs)
        self.watch_limit_ok = limit.ok
        self.watcher = FileWatcher(cfg.watch, ignore=ignore)
        self.drill_key = DrillKey.issue(cfg.state_dir)
        # Forks name the launcher of writers gone before their event is read.
        self.forks = ForkWatch.open() if os.geteuid() == 0 else None
        self.attributor = Attributor(
            cfg.watch,
            is_drill=self.drill_key.carried_by,
            smb=SmbSessions(cfg.smb_conf),
            forks=self.forks,
        )
        self.attributor.ignore(self.spool.files())
        self.tripwire = Tripwire(
            self.actions,
            cfg.tripwire,
            protect=cfg.protect,
            followed=FollowedMode(cfg.state_dir).read(),
        )
        creds = None
        if cfg.insecure:
            log.warning(
                "WARNING: --insecure: telemetry to %s is neither encrypted nor authenticated",
                ", ".join(cfg.collectors),
            )
        else:
            assert cfg.tls_ca and cfg.tls_cert and cfg.tls_key
            log.info("mutual TLS to %s as %s", ", ".join(cfg.collectors), cfg.tls_cert)
            creds = grpc.ssl_channel_credentials(
                cfg.tls_ca.read_bytes(), cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes()
            )
        caps = ["suspend", "isolate", "block_client", self.attributor.method]
        self.recorder = Recorder(cfg.record) if cfg.record else None
        self.shipper = Shipper(
            cfg.collectors[0],
            self.spool,
            HelloInfo(
                wire_text(cfg.host_id),
                self.boot_id,
                [wire_text(os.path.realpath(w)) for w in cfg.watch],
                caps,
                self.tripwire.describe,
            ),
            self.actions.run,
            creds,
            self.recorder,
            other_targets=cfg.collectors[1:],
            on_config=self._on_config,
        )
        self.window = WindowLoop(
            self.watcher,
            self.attributor,
            self.shipper.submit_window,
            window_s=cfg.window_s,
            canaries=frozenset(canary_paths),
            known_extensions=exts,
            on_window=self._on_window,
            on_ruined=self._on_ruined,
            spool_dropped=lambda: self.spool.dropped,
            poll_s=ONSET_POLL_S,
            burst_events=ONSET_EVENTS,  # nothing seen yet: the first window is an onset
        )
        self._stop = threading.Event()
        self.metrics = AgentMetrics(self)
        self.metrics_address: tuple[str, int] | None = None

    def _trouble(self) -> str:
        """What keeps the watchdog from vouching for the agent ("" when nothing).

        Threads being alive is not enough: a window thread stuck in a call (a probe
        of a file that never answers) is alive and blind. It must go round its loop.
        """
        names = {t.name for t in threading.enumerate() if t.is_alive()}
        gone = {"tocsin-window", "tocsin-ship"} - names
        if gone:
            return f"thread {', '.join(sorted(gone))} stopped"
        stalled = self.window.stalled_s()
        if stalled > WINDOW_STALL_S:
            faulthandler.dump_traceback(all_threads=True)  # where it hangs, to the journal
            probing = self.window.acc.probing
            where = f" (probing {probing})" if probing else ""
            return f"the window thread has made no progress for {stalled:.0f} s{where}"
        return ""

    def _on_window(self, w: pb.Window, writers: list[pb.ProcessSample]) -> None:
        self.metrics.observe_window(w)
        events = w.events_created + w.events_modified + w.events_deleted + w.events_moved
        full = (w.end.ToNanoseconds() - w.start.ToNanoseconds()) >= 0.9e9 * self.cfg.window_s
        quiet = full and events < ONSET_EVENTS
        self.window.burst_events = ONSET_EVENTS if quiet else limits.BURST_EVENTS
        destroying = self.window.damage_last or w.canary_touches
        self.window.window_s = (
            min(FAST_WINDOW_S, self.cfg.window_s) if destroying else self.cfg.window_s
        )
        result = self.tripwire.check(w, writers, self.attributor.canary_trees)
        if result is not None:
            self.shipper.submit_result(result)

    def _on_ruined(self, writer: pb.ProcessSample, ruined: Ruined, at_s: float) -> bool:
        result = self.tripwire.ruined(writer, ruined, at_s)
        if result is not None:
            self.shipper.submit_result(result)
        return result is not None

    def _on_config(self, config: pb.ConfigUpdate) -> None:
        """A collector's word on the tripwire, for an agent set to follow it."""
        if not self.tripwire.follow(config.tripwire_mode):
            return
        log.warning(
            "tripwire: %s from now, as the collector responds (kept for restarts)",
            self.tripwire.mode,
        )
        try:
            FollowedMode(self.cfg.state_dir).write(self.tripwire.mode)
        except OSError as exc:
            log.warning("tripwire: the collector's word not kept for restarts: %s", exc)

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        again = self.firewall.reapply()
        if again:
            log.warning("isolation re-applied at start: %s", again)
        self.firewall.start()
        self.watcher.start()
        self.attributor.start()
        self.window.start()
        self.shipper.start()
        log.info(
            "tocsin agent %s watching %s, collector %s (attribution: %s)",
            self.boot_id,
            self.cfg.watch,
            ", ".join(self.cfg.collectors),
            self.attributor.method,
        )
        if self.cfg.metrics:
            host, _, port = self.cfg.metrics.rpartition(":")
            self.metrics_address = self.metrics.serve(host.strip("[]"), int(port))
            log.info("metrics on http://%s:%d/metrics", *self.metrics_address)
        watchdog = sdnotify.Watchdog(self._trouble)
        watchdog.start()
        sdnotify.notify(f"READY=1\nSTATUS=watching {len(self.cfg.watch)} trees")
        limits.release_startup_memory()
        self._stop.wait()  # signal handlers (main thread) call request_stop()
        sdnotify.notify("STOPPING=1")
        watchdog.stop()
        self.metrics.close()
        self.window.stop()
        self.watcher.stop()
        self.attributor.stop()
        if self.forks is not None:
            self.forks.stop()
        self.shipper.stop()
        self.firewall.stop()
        if self.recorder:
            self.recorder.close()
        self.spool.close()
        return 0
