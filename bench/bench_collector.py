"""Collector capacity: N agents on real gRPC streams against a real tocsin-collector.

    python bench/bench_collector.py [--agents 200[,400...]] [--duration 10] [--rate 1]
        [--attack-every 2] [--busy 0.2] [--procs 1] [--json OUT]
        [--baseline REV | --baseline FILE.json]

A ``tocsin-collector --respond enforce --insecure`` process listens on loopback
with a fresh SQLite database (the embedded default). ``--procs`` load-generator
processes (this file with ``--generate``) hold the agents: each agent is one
grpc.aio channel with its own connection and one Telemetry stream. Every agent
sends ``--rate`` windows a second, copied from the recorded benign fixtures
(tests/fixtures): quiet ones, or busy ones (backups, rsync, photo imports,
office saves) for the ``--busy`` share of agents whose nightly backup runs.
Every ``--attack-every`` seconds another agent starts an attack: the
encryption window of the collector tests (tests/fakeagent.py) instead of its
quiet one, until a command arrives; like a real agent, every command is
answered with an ActionResult. A stream that ends is reopened after the
collector's ``grpc-retry-pushback-ms`` hint (else 1 s), or as soon as an attack
window is made if that is sooner (the agent's shipper does the same,
``tocsin.v1.evidence``), and the unacked windows are resent, as the agent's
spool does.

Figures, over ``--duration`` seconds after a warm-up: windows acked per second,
ack latency (window sent -> ack covering it) p50/p99/max, attack -> command
p50/max and how many attacks were answered, commands to agents not under
attack, the collector's CPU (utime+stime from /proc) and peak RSS (VmHWM),
bytes on disk per window (the database file after a clean stop and a WAL
checkpoint, over the rows of ``windows``), the load generators' CPU (to see
that they were not the limit), and windows created against windows stored.

``--agents 1000,2000`` runs each count in turn against a fresh collector (the
sustainable rate and twice it, say) and prints them side by side; the row
"nothing lost" checks that every window created was stored once the agents had
drained their spools. ``--baseline`` prints a previous release line's figures
beside these: a git revision (``git archive`` into a temp directory; its
collector runs from there on this venv's interpreter and dependencies, same
load, same run, one after the other), or a results file written by an earlier
``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc
from tocsin.v1.evidence import carries_evidence

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "tests"))
from fakeagent import encrypting  # noqa: E402  (the collector tests' attack window)

# Recorded benign workloads (tests/fixtures): their windows are the agents' traffic, drawn
# at random. Not rsync-mirror: its temp-file extensions, drawn again and again out of order,
# spread like a ransom extension and get a critical (a suspend) for a benign agent.
BENIGN = (
    "office-saves",
    "photo-import",
    "source-checkout",
    "sqlite-churn",
    "zip-folders",
    "backup-targz",
    "gzip-logs",
)
QUIET_MAX_FILES = 3  # a quiet window touches and reads at most this many files, no archive
PUSHBACK_KEY = "grpc-retry-pushback-ms"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def window_pools() -> tuple[list[pb.Window], list[pb.Window]]:
    """(quiet, busy) windows of the benign fixtures."""
    quiet: list[pb.Window] = []
    busy: list[pb.Window] = []
    for name in BENIGN:
        for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines():
            msg = json_format.Parse(line, pb.AgentMessage())
            if msg.WhichOneof("body") != "window":
                continue
            w = msg.window
            touched = w.files_created + w.files_modified + w.files_deleted + w.files_renamed
            small = max(touched, w.files_read) <= QUIET_MAX_FILES and not w.archives_created
            (quiet if small else busy).append(w)
    return quiet, busy


# ---------------------------------------------------------------- the generator


@dataclass
class AgentFigures:
    created: int = 0
    acked_in_window: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    unacked: int = 0
    reconnects: int = 0
    ends: dict[str, int] = field(default_factory=dict)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    stray_commands: int = 0


class BenchAgent:
    """One agent: a channel, a stream, windows at ``rate``/s, answers to commands."""

    def __init__(
        self, target: str, index: int, pool: list[pb.Window], rate: float, figs: AgentFigures
    ) -> None:
        self.target, self.pool, self.rate, self.figs = target, pool, rate, figs
        self.host_id = f"bench-{index:05d}"
        self.boot_id = str(uuid.uuid4())
        self.rand = random.Random(index)
        self.seq = 0
        self.sent: dict[int, float] = {}  # seq -> monotonic send time, until acked
        self.payloads: dict[int, pb.AgentMessage] = {}
        self.out: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        self.attack_at: float | None = None  # monotonic time the attack began
        self.attack_done = False
        self.measure = (0.0, 0.0)
        self.produced, self.drained = asyncio.Event(), asyncio.Event()
        self.evidence = asyncio.Event()  # an attack window made since the stream began

    def window(self, now_wall: float) -> pb.AgentMessage:
        self.seq += 1
        if self.attack_at is not None and not self.attack_done:
            msg = encrypting(self.seq)
        else:
            msg = pb.AgentMessage(window=self.pool[self.rand.randrange(len(self.pool))])
            msg.window.seq = self.seq
        msg.window.start.FromNanoseconds(int((now_wall - 1.0 / self.rate) * 1e9))
        msg.window.end.FromNanoseconds(int(now_wall * 1e9))
        return msg

    async def produce(self, start: float, stop: float, attack_at: float | None) -> None:
        period = 1.0 / self.rate
        t = start + self.rand.random() * period
        while t < stop:
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            if attack_at is not None and self.attack_at is None and time.monotonic() >= attack_at:
                self.attack_at = time.monotonic()
            msg = self.window(time.time())
            if carries_evidence(msg.window):
                self.evidence.set()
            now = time.monotonic()
            self.sent[msg.window.seq] = now
            self.payloads[msg.window.seq] = msg
            self.figs.created += 1
            await self.out.put(msg)
            t += period

    def on_ack(self, seq: int) -> None:
        now = time.monotonic()
        lo, hi = self.measure
        for s in [s for s in self.sent if s <= seq]:
            sent = self.sent.pop(s)
            del self.payloads[s]
            if lo <= sent < hi:
                self.figs.latencies_ms.append(round((now - sent) * 1000, 2))
            if lo <= now < hi:
                self.figs.acked_in_window += 1

    def on_command(self, cmd: pb.Command) -> pb.AgentMessage:
        now = time.monotonic()
        if self.attack_at is not None and not self.attack_done:
            self.attack_done = True
            self.figs.attacks.append(
                {"host": self.host_id, "ms": round((now - self.attack_at) * 1000, 1)}
            )
        elif self.attack_at is None:
            self.figs.stray_commands += 1  # a false positive (later commands follow the first)
        return pb.AgentMessage(
            action_result=pb.ActionResult(
                command_id=cmd.id, kind=cmd.kind, status="done", pids=list(cmd.pids)
            )
        )

    async def stream(self, channel: grpc.aio.Channel) -> float:
        """One stream until it ends; returns the seconds to wait before the next."""
        hello = pb.AgentMessage(
            hello=pb.Hello(host_id=self.host_id, boot_id=self.boot_id, agent_version="bench")
        )
        # A new stream resends what the last one left unacked, as the spool does.
        self.evidence.clear()
        self.out = asyncio.Queue()
        for s in sorted(self.payloads):
            self.out.put_nowait(self.payloads[s])

        async def requests() -> Any:
            yield hello
            while (m := await self.out.get()) is not None:
                yield m

        call = pb_grpc.TelemetryStub(channel).Stream(requests())
        try:
            async for reply in call:
                body = reply.WhichOneof("body")
                if body == "ack" and reply.ack.boot_id == self.boot_id:
                    self.on_ack(reply.ack.seq)
                elif body == "command":
                    await self.out.put(self.on_command(reply.command))
                if self.settled():
                    self.drained.set()
            return 1.0
        except grpc.aio.AioRpcError as exc:
            name = f"{exc.code().name} ({(exc.details() or '')[:40]})"
            self.figs.ends[name] = self.figs.ends.get(name, 0) + 1
            for key, value in exc.trailing_metadata() or ():
                if key == PUSHBACK_KEY:
                    return int(value) / 1000.0
            return 1.0
        finally:
            call.cancel()

    def settled(self) -> bool:
        """Done producing, every window acked, the attack (if any) answered."""
        answered = self.attack_at is None or self.attack_done
        return self.produced.is_set() and not self.sent and answered

    async def keep_streaming(self, channel: grpc.aio.Channel) -> None:
        while True:
            wait_s = await self.stream(channel)
            self.figs.reconnects += 1
            # Like the agent's shipper: back before the pushback ends with evidence to send.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.evidence.wait(), wait_s)

    async def run(
        self,
        connect_at: float,
        start: float,
        measure: tuple[float, float],
        drain_until: float,
        attack_at: float | None,
    ) -> None:
        self.measure = measure
        await asyncio.sleep(max(0.0, connect_at - time.monotonic()))
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(self.target, options=options) as channel:
            streaming = asyncio.create_task(self.keep_streaming(channel))
            try:
                await self.produce(start, measure[1], attack_at)
                self.produced.set()
                if not self.settled():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.drained.wait(), max(0.0, drain_until - time.monotonic())
                        )
            finally:
                streaming.cancel()
                await asyncio.gather(streaming, return_exceptions=True)
                self.figs.unacked += len(self.sent)


def _quiet_aclose(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """grpc.aio closes a cancelled stream's request generator while it waits: not news."""
    if "aclose()" not in str(context.get("exception")):
        loop.default_exception_handler(context)


async def generate(spec: dict[str, Any]) -> dict[str, Any]:
    asyncio.get_running_loop().set_exception_handler(_quiet_aclose)
    quiet, busy = window_pools()
    wall0 = spec["t0"]
    mono0 = time.monotonic() + (wall0 - time.time())
    start = mono0
    measure = (mono0 + spec["warmup"], mono0 + spec["warmup"] + spec["duration"])
    drain_until = measure[1] + spec["drain"]
    figs = AgentFigures()
    agents = []
    for i in spec["indices"]:
        pool = busy if i < spec["busy_agents"] else quiet
        attack = spec["attacks"].get(str(i))
        attack_at = None if attack is None else mono0 + attack
        agents.append((BenchAgent(spec["target"], i, pool, spec["rate"], figs), attack_at))
    # Connections spread over the ramp, as a fleet comes up: not a SYN flood at once.
    spread = max(0.0, start - 1.0 - time.monotonic()) / max(1, len(agents))
    now = time.monotonic()
    await asyncio.gather(
        *(
            a.run(now + k * spread, start, measure, drain_until, at)
            for k, (a, at) in enumerate(agents)
        )
    )
    return {
        "created": figs.created,
        "acked_in_window": figs.acked_in_window,
        "latencies_ms": figs.latencies_ms,
        "unacked": figs.unacked,
        "reconnects": figs.reconnects,
        "ends": figs.ends,
        "attacks": figs.attacks,
        "stray_commands": figs.stray_commands,
    }


# ---------------------------------------------------------------- the collector side


def proc_figures(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, peak RSS bytes) of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return cpu_s, int(hwm.group(1)) * 1024 if hwm else 0


def collector_cmd(tree: Path | None) -> tuple[list[str], dict[str, str]]:
    """How to start ``tocsin-collector``: this venv's, or that of an exported source tree."""
    env = dict(os.environ)
    if tree is None:
        return [str(Path(sys.executable).parent / "tocsin-collector")], env
    # The tree's packages under the names the editable install maps (pyproject.toml),
    # found on PYTHONPATH before this venv's own tocsin.
    shim = tree / ".shim" / "tocsin"
    if not shim.exists():  # made once, for every run of that tree
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text("")
        for name, where in (
            ("v1", "protos/tocsin/v1"),
            ("agent", "agent"),
            ("collector", "collector"),
            ("models", "models"),
        ):
            (shim / name).symlink_to(tree / where)
    env["PYTHONPATH"] = str(shim.parent)
    code = "import sys; from tocsin.collector.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code], env


def export_revision(rev: str, into: Path) -> Path:
    """``git archive REV`` unpacked under ``into``; exits 2 on an unknown revision."""
    tree = into / "tree"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True
    )
    if archive.returncode != 0:
        sys.exit(f"bench_collector: --baseline {rev}: {archive.stderr.decode().strip()}")
    tar = into / "tree.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as tf:
        tf.extractall(tree, filter="data")
    return tree


def run_once(args: argparse.Namespace, tree: Path | None, work: Path) -> dict[str, Any]:
    """One collector under the whole load; its figures."""
    db = work / "collector.db"
    log_path = work / "collector.log"
    cmd, env = collector_cmd(tree)
    cmd += [
        "--listen",
        "127.0.0.1:0",
        "--db",
        str(db),
        "--respond",
        "enforce",
        "--insecure",
        "--fleet-guard",
        "0",
    ]
    with log_path.open("wb") as log_fh:
        col = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env)
    gens: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 60
        target = None
        while target is None:
            if col.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"bench_collector: collector did not start:\n{log_path.read_text()}")
            m = re.search(r"listening on (\S+:\d+)", log_path.read_text(errors="replace"))
            target = m.group(1) if m else None
            time.sleep(0.05)
        ramp_s = 2.0 + args.agents / 500
        t0 = time.time() + ramp_s
        # Attacks: one new agent every --attack-every s over the measured seconds.
        attacks: dict[str, float] = {}
        every = args.attack_every or float("inf")  # 0: no attack
        at = args.warmup + every / 2
        stride = max(1, args.agents // (int(args.duration / every) + 1))
        k = 0
        while at < args.warmup + args.duration:
            attacks[str((k * stride + args.agents - 1) % args.agents)] = at
            at += every
            k += 1
        busy_agents = int(args.agents * args.busy)
        for p in range(args.procs):
            spec = {
                "target": target,
                "indices": list(range(p, args.agents, args.procs)),
                "rate": args.rate,
                "t0": t0,
                "warmup": args.warmup,
                "duration": args.duration,
                "drain": args.drain,
                "busy_agents": busy_agents,
                "attacks": attacks,
            }
            gens.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--generate", json.dumps(spec)],
                    stdout=subprocess.PIPE,
                )
            )
        time.sleep(max(0.0, t0 + args.warmup - time.time()))
        cpu0, _ = proc_figures(col.pid)
        gen0 = sum(proc_figures(g.pid)[0] for g in gens)
        mono0 = time.monotonic()
        time.sleep(max(0.0, t0 + args.warmup + args.duration - time.time()))
        cpu1, hwm = proc_figures(col.pid)
        gen1 = sum(proc_figures(g.pid)[0] for g in gens)
        elapsed = time.monotonic() - mono0
        cpu_pct = 100 * (cpu1 - cpu0) / elapsed
        gen_pct = 100 * (gen1 - gen0) / elapsed
        limit = args.drain + 60
        outs = []
        for g in gens:
            try:
                out, _ = g.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                sys.exit(
                    f"bench_collector: a load generator still runs {limit:.0f} s after the end"
                )
            if g.returncode != 0:
                sys.exit(f"bench_collector: a load generator failed (exit {g.returncode})")
            outs.append(json.loads(out))
        col.send_signal(signal.SIGTERM)
        if col.wait(30) != 0:
            sys.exit(f"bench_collector: collector exit {col.returncode}:\n{log_path.read_text()}")
    finally:
        for p in (*gens, col):
            if p.poll() is None:
                p.kill()
                p.wait()
    con = sqlite3.connect(db)
    try:
        stored = con.execute("SELECT count(*) FROM windows").fetchone()[0]
        # What stays on disk, not a WAL that the size of the last transactions left.
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    disk = sum(f.stat().st_size for f in work.glob("collector.db*"))
    lat = sorted(x for o in outs for x in o["latencies_ms"])
    answered = sorted(a["ms"] for o in outs for a in o["attacks"])
    ends: dict[str, int] = {}
    for o in outs:
        for k2, v in o["ends"].items():
            ends[k2] = ends.get(k2, 0) + v
    return {
        "windows_per_s": sum(o["acked_in_window"] for o in outs) / args.duration,
        "offered_per_s": args.agents * args.rate,
        "ack_ms": {
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "max": lat[-1] if lat else None,
        },
        "attack_ms": {
            "p50": statistics.median(answered) if answered else None,
            "max": answered[-1] if answered else None,
        },
        "attacks": len(attacks),
        "attacks_answered": len(answered),
        "attacks_within_1s": sum(1 for ms in answered if ms <= 1000),
        "stray_commands": sum(o["stray_commands"] for o in outs),
        "cpu_pct": cpu_pct,
        "generator_cpu_pct": gen_pct,
        "rss_peak_mb": hwm / 2**20,
        "bytes_per_window": disk / stored if stored else None,
        "created": sum(o["created"] for o in outs),
        "stored": stored,
        "unacked_at_end": sum(o["unacked"] for o in outs),
        "stream_ends": ends,
    }


def pct(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def rows(f: dict[str, Any]) -> list[tuple[str, str]]:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    a = f["ack_ms"]
    return [
        ("windows/s acked (offered)", f"{f['windows_per_s']:.0f} ({f['offered_per_s']:.0f})"),
        ("ack p50 / p99 / max ms", f"{ms(a['p50'])} / {ms(a['p99'])} / {ms(a['max'])}"),
        (
            "attack -> command p50 / max ms",
            f"{ms(f['attack_ms']['p50'])} / {ms(f['attack_ms']['max'])}",
        ),
        ("attacks answered", f"{f['attacks_answered']} of {f['attacks']}"),
        (
            "attacks answered within 1 s",
            f"{f.get('attacks_within_1s', '-')} of {f['attacks']}",
        ),
        ("commands to agents not attacked", str(f["stray_commands"])),
        ("collector CPU % of a core", f"{f['cpu_pct']:.0f}"),
        ("load generators' CPU %", f"{f.get('generator_cpu_pct', 0):.0f}"),
        ("collector peak RSS MB", f"{f['rss_peak_mb']:.0f}"),
        (
            "bytes on disk / window",
            "-" if f["bytes_per_window"] is None else f"{f['bytes_per_window']:.0f}",
        ),
        ("created / stored / unacked", f"{f['created']} / {f['stored']} / {f['unacked_at_end']}"),
        ("nothing lost (created = stored)", "yes" if f["created"] == f["stored"] else "NO"),
        (
            "streams ended (as agents saw it)",
            ", ".join(f"{k} {v}" for k, v in f["stream_ends"].items()),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--agents", default="200", help="agents; several (800,1600): one run each, side by side"
    )
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--rate", type=float, default=1.0, help="windows per second per agent")
    ap.add_argument("--attack-every", type=float, default=2.0, help="s between attacks (0: none)")
    ap.add_argument("--busy", type=float, default=0.2, help="share of agents in a backup")
    ap.add_argument("--procs", type=int, default=1, help="load-generator processes")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--drain", type=float, default=10.0, help="seconds allowed for the last acks")
    ap.add_argument("--baseline", help="git revision, or a results file of an earlier --json")
    ap.add_argument("--json", type=Path, help="write this run's figures here")
    ap.add_argument("--keep", type=Path, help="work in this new directory and keep it (logs, db)")
    ap.add_argument("--generate", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate:
        print(json.dumps(asyncio.run(generate(json.loads(args.generate)))))
        return 0
    try:
        counts = [int(n) for n in str(args.agents).split(",")]
    except ValueError:
        ap.error(f"--agents: want a number or numbers separated by commas, got {args.agents!r}")
    if min(counts) < 1 or args.duration <= 0 or args.rate <= 0 or args.procs < 1:
        ap.error("--agents, --duration, --rate and --procs must be positive")
    params = {k: getattr(args, k) for k in ("agents", "duration", "rate", "attack_every", "busy")}
    columns: list[tuple[str, dict[str, Any]]] = []
    mine: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as cleanup:
        if args.keep:
            args.keep.mkdir(parents=True)
            work = args.keep
        else:
            work = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tocsin-bench-")))
        saved: dict[str, Any] | None = None
        tree: Path | None = None
        if args.baseline and Path(args.baseline).is_file():
            saved = json.loads(Path(args.baseline).read_text())
            if saved.get("params") != params:
                print(f"note: {args.baseline} was measured with {saved.get('params')}")
        elif args.baseline:
            (work / "base").mkdir()
            tree = export_revision(args.baseline, work / "base")
        for n in counts:
            one = argparse.Namespace(**{**vars(args), "agents": n})
            (work / f"this-{n}").mkdir()
            mine[str(n)] = run_once(one, None, work / f"this-{n}")
            columns.append((f"this tree, {n}", mine[str(n)]))
            if saved is not None:
                theirs = saved.get("runs", {}).get(str(n)) or saved["figures"]
                columns.append((f"{Path(args.baseline).name}, {n}", theirs))
            elif tree is not None:
                (work / f"base-{n}").mkdir()
                columns.append((f"{args.baseline}, {n}", run_once(one, tree, work / f"base-{n}")))
    if args.json:
        first = mine[str(counts[0])]
        doc = {"params": params, "figures": first, "runs": mine}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    load = os.getloadavg()
    print(
        f"collector capacity: {args.agents} agents x {args.rate:g} windows/s for"
        f" {args.duration:g} s (+{args.warmup:g} s warm-up), attack every"
        f" {args.attack_every:g} s, {args.busy:.0%} busy; {args.procs} generator process(es);"
        f" load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    table = [dict(rows(f)) for _, f in columns]
    print(f"{'':34}" + "".join(f"{label:>28}" for label, _ in columns))
    for name, _ in rows(columns[0][1]):
        print(f"{name:34}" + "".join(f"{t.get(name, '-'):>28}" for t in table))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
