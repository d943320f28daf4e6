"""Collector capacity: N agents on real gRPC streams against a real tocsin-collector.

    python bench/bench_collector.py [--agents 200[,400...]] [--duration 10] [--rate 1]
        [--attack-every 2] [--busy 0.2] [--procs 1] [--json OUT]
        [--baseline REV | --baseline FILE.json | --scale-out] [--floor]

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
spool does. Like the agent, an attack window is also sent alone in an
``Alarm`` call beside the stream (not to a baseline that answers
UNIMPLEMENTED). Like the agent, the hello lists the capability ``pause``: a
collector that sends ``Pause`` keeps the stream, and the agent holds its
windows until the collector calls it back (``Pause(0)``), it makes an attack
window, or the pause runs out, then sends a hello and every unacked window
again (back on its own, the first alone and the rest once it is acked; back
for an attack, a copy of the attack window ahead of them all).

Figures, over ``--duration`` seconds after a warm-up: windows acked per second,
ack latency (window sent -> ack covering it) p50/p99/max, attack -> command
p50/max and how many attacks were answered, commands to agents not under
attack, the collector's CPU (utime+stime from /proc) and peak RSS (VmHWM),
bytes on disk per window (the database file after a clean stop and a WAL
checkpoint, over the rows of ``windows``), the load generators' CPU (to see
that they were not the limit), and windows created against windows stored.

``--scale-out`` runs the same load through the scale-out roles instead
(docs/scale-out.md): ``nats-server -js`` and a PostgreSQL cluster in the work
directory, one ``tocsin-collector gateway`` (the agents' target) and one, then
two ``tocsin-collector worker`` processes. It prints both runs side by side:
windows/s acked (by the gateway, once JetStream has them) and stored (by the
workers: the judging side), ack latency, attack -> command latency, the CPU of
each role (gateway, workers, nats-server, postgres) and its CPU milliseconds
per window stored, and the scaling ratio of two workers over one.

``--agents 1000,2000`` runs each count in turn against a fresh collector (the
sustainable rate and twice it, say) and prints them side by side; the row
"nothing lost" checks that every window created was stored once the agents had
drained their spools.

``--floor`` adds, for each count, a run against a server that only acks
(the same gRPC service and options, every window acked as it is read, nothing
stored, judged or answered): what this machine's gRPC and the generators
beside it allow at all, the ceiling any collector in one Python process meets
here.

``--baseline`` prints a previous release line's figures beside these: a git
revision (``git archive`` into a temp directory; its collector runs from there
on this venv's interpreter and dependencies, same load, same run, one after the
other), or a results file written by an earlier ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
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
    pauses: int = 0
    ends: dict[str, int] = field(default_factory=dict)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    stray_commands: int = 0
    loop_late_ms: list[float] = field(default_factory=list)  # the generator's own lag


async def watch_loop(
    figs: AgentFigures, measure: tuple[float, float], tick_s: float = 0.05
) -> None:
    """How late this generator's event loop runs a timer, over the measured seconds: a
    late generator sends late and reads commands late, which is not the collector's."""
    while time.monotonic() < measure[1]:
        t0 = time.monotonic()
        await asyncio.sleep(tick_s)
        if t0 >= measure[0]:
            figs.loop_late_ms.append(max(0.0, (time.monotonic() - t0 - tick_s) * 1000))


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
        self.paused_until = 0.0  # the collector's pause: windows wait (0: not paused)
        self.probe: int | None = None  # the seq sent alone after a pause, until acked
        self.called_back = asyncio.Event()  # the collector's Pause(0)
        self.stub: pb_grpc.TelemetryStub | None = None
        self.alarms = True  # the collector takes Alarm calls (until UNIMPLEMENTED)
        self.alarm_calls: set[asyncio.Task[Any]] = set()
        self.resumer: asyncio.Task[None] | None = None

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
                self.alarm(msg.window)
            now = time.monotonic()
            self.sent[msg.window.seq] = now
            self.payloads[msg.window.seq] = msg
            self.figs.created += 1
            if not self.paused_until and self.probe is None:  # else sent with the rest later
                await self.out.put(msg)
            elif not self.paused_until and carries_evidence(msg.window):
                self.probe = None  # like the agent: evidence ends the wait for the probe's ack
                self.resend()
            t += period

    def alarm(self, w: pb.Window) -> None:
        """Like the agent: a window with evidence also goes alone, in an Alarm call."""
        if self.stub is None or not self.alarms:
            return
        request = pb.AlarmRequest(
            hello=pb.Hello(host_id=self.host_id, boot_id=self.boot_id), window=w
        )
        task = asyncio.ensure_future(self.stub.Alarm(request, timeout=5.0))
        self.alarm_calls.add(task)
        task.add_done_callback(self.alarm_answered)

    def alarm_answered(self, task: asyncio.Task[Any]) -> None:
        self.alarm_calls.discard(task)
        exc = task.exception() if not task.cancelled() else None
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            self.alarms = False  # a baseline without the call: the stream alone

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
            self.evidence.clear()
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
            hello=pb.Hello(
                host_id=self.host_id,
                boot_id=self.boot_id,
                agent_version="bench",
                capabilities=["pause"],
            )
        )
        # A new stream resends what the last one left unacked, as the spool does.
        if self.attack_at is None or self.attack_done:
            self.evidence.clear()
        self.out = asyncio.Queue()
        self.paused_until, self.probe = 0.0, None
        self.resend()

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
                    if self.probe is not None and reply.ack.seq >= self.probe:
                        self.probe = None
                        self.resend()
                elif body == "command":
                    await self.out.put(self.on_command(reply.command))
                elif body == "pause" and reply.pause.quiet_ms == 0:
                    if self.paused_until:
                        self.called_back.set()
                elif body == "pause":
                    self.figs.pauses += 1
                    self.paused_until = time.monotonic() + reply.pause.quiet_ms / 1000.0
                    self.called_back.clear()
                    if self.resumer is None or self.resumer.done():
                        self.resumer = asyncio.create_task(self.resume(hello))
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
            if self.resumer is not None:
                self.resumer.cancel()

    def resend(self) -> None:
        """Queue every unacked window, oldest first."""
        for s in sorted(self.payloads):
            self.out.put_nowait(self.payloads[s])

    async def resume(self, hello: pb.AgentMessage) -> None:
        """At the pause's end, or at the first attack window: a hello, then every
        unacked window (the collector took nothing after the one it paused); back on
        schedule, the first window alone, the rest once it is acked."""
        woken = [asyncio.create_task(e.wait()) for e in (self.evidence, self.called_back)]
        try:
            await asyncio.wait(
                woken,
                timeout=max(0.0, self.paused_until - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in woken:
                task.cancel()
        self.paused_until, self.probe = 0.0, None
        attack = [s for s, m in self.payloads.items() if carries_evidence(m.window)]
        if self.evidence.is_set() and attack:
            early = pb.AgentMessage()
            early.CopyFrom(self.payloads[max(attack)])
            early.window.ahead = True  # judged at once, ahead of the spool
            self.out.put_nowait(early)
        self.out.put_nowait(hello)
        if self.evidence.is_set() or self.called_back.is_set() or not self.payloads:
            self.resend()
        else:
            self.probe = min(self.payloads)
            self.out.put_nowait(self.payloads[self.probe])

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
            self.stub = pb_grpc.TelemetryStub(channel)
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
        watch_loop(figs, measure),
        *(
            a.run(now + k * spread, start, measure, drain_until, at)
            for k, (a, at) in enumerate(agents)
        ),
    )
    return {
        "created": figs.created,
        "acked_in_window": figs.acked_in_window,
        "latencies_ms": figs.latencies_ms,
        "unacked": figs.unacked,
        "reconnects": figs.reconnects,
        "pauses": figs.pauses,
        "ends": figs.ends,
        "attacks": figs.attacks,
        "stray_commands": figs.stray_commands,
        "loop_late_ms": figs.loop_late_ms,
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
        tf.extractall(tree, filter=_inside)
    return tree


def _inside(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """The "data" filter, but a link out of the tree (one was committed by mistake
    once) is left out instead of failing the whole export."""
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        if member.issym() or member.islnk():
            return None
        raise


def wait_line(proc: subprocess.Popen[bytes], log_path: Path, pattern: str, what: str) -> str:
    """The first match of ``pattern`` in the log of ``proc`` (exit 2 if it dies or takes 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"bench_collector: {what} did not start:\n{log_path.read_text()[-3000:]}")
        m = re.search(pattern, log_path.read_text(errors="replace"))
        if m:
            return m.group(m.lastindex or 0)
        time.sleep(0.05)


class Embedded:
    """The embedded default: one ``tocsin-collector`` process, one SQLite file."""

    stores = True  # what it acks it stores (the run waits for the drain)

    def __init__(self, tree: Path | None, work: Path) -> None:
        self.tree, self.work = tree, work
        self.db = work / "collector.db"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        log_path = self.work / "collector.log"
        cmd, env = collector_cmd(self.tree)
        cmd += ["--listen", "127.0.0.1:0", "--db", str(self.db), *ROLE_FLAGS]
        with log_path.open("wb") as log_fh:
            self.proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env)
        return wait_line(self.proc, log_path, r"listening on (\S+:\d+)", "collector")

    def pids(self) -> dict[str, list[int]]:
        assert self.proc is not None
        return {"collector": [self.proc.pid]}

    def stored(self) -> int:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return int(con.execute("SELECT count(*) FROM windows").fetchone()[0])
        finally:
            con.close()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(30) != 0:
            log = (self.work / "collector.log").read_text()
            sys.exit(f"bench_collector: collector exit {self.proc.returncode}:\n{log}")

    def bytes_per_window(self) -> float | None:
        stored = self.stored()
        con = sqlite3.connect(self.db)
        try:  # what stays on disk, not a WAL that the size of the last transactions left
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        disk = sum(f.stat().st_size for f in self.work.glob("collector.db*"))
        return disk / stored if stored else None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --floor: the Telemetry service reduced to acking every window as it is read.
_ACK_ONLY = """
import asyncio, grpc
from tocsin.collector.grpcconf import SERVER_OPTIONS
from tocsin.v1 import telemetry_pb2 as pb, telemetry_pb2_grpc as pb_grpc

class AckOnly(pb_grpc.TelemetryServicer):
    async def Stream(self, requests, context):
        boot = ""
        async for msg in requests:
            body = msg.WhichOneof("body")
            if body == "hello":
                boot = msg.hello.boot_id
                await context.write(pb.CollectorMessage(ack=pb.Ack(boot_id=boot, seq=0)))
            elif body == "window":
                ack = pb.Ack(boot_id=boot, seq=msg.window.seq)
                await context.write(pb.CollectorMessage(ack=ack))

async def main():
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_TelemetryServicer_to_server(AckOnly(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


class AckOnly(Embedded):
    """``--floor``: a server that acks every window as it reads it, nothing more."""

    stores = False

    def start(self) -> str:
        log_path = self.work / "ack-only.log"
        with log_path.open("wb") as log_fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ACK_ONLY], stdout=log_fh, stderr=subprocess.STDOUT
            )
        return wait_line(self.proc, log_path, r"listening on (\S+:\d+)", "ack-only server")

    def stored(self) -> int:
        return 0  # nothing is stored: only the acks count

    def stop(self) -> None:
        self.kill()

    def bytes_per_window(self) -> float | None:
        return None


class ScaleOut:
    """``--scale-out``: nats-server -js and a PostgreSQL cluster in ``work``, one gateway
    (the agents' target) and ``workers`` workers, all on loopback."""

    stores = True

    def __init__(self, workers: int, work: Path) -> None:
        from pgserver import pg_server  # tests/pgserver.py: initdb/pg_ctl in a temp dir

        self.n, self.work = workers, work
        self.cleanup = contextlib.ExitStack()
        dsn = self.cleanup.enter_context(pg_server())
        self.dsn = dsn
        parts = dict(kv.split("=", 1) for kv in dsn.split())
        self.store = f"postgresql://{parts['user']}@/{parts['dbname']}?host={parts['host']}"
        self.postmaster = int(
            (Path(parts["host"]).parent / "pgdata" / "postmaster.pid").read_text().split()[0]
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, cmd: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.work / f"{name}.log"
        with log_path.open("wb") as log_fh:
            proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc, log_path

    def start(self) -> str:
        nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        js = ["-js", "-sd", str(self.work / "jetstream"), "-a", "127.0.0.1", "-p", str(port)]
        proc, log_path = self._spawn("nats-server", [nats_bin, *js])
        wait_line(proc, log_path, "Server is ready", "nats-server")
        role = [str(Path(sys.executable).parent / "tocsin-collector")]
        common = ["--bus", url, "--store", self.store, *ROLE_FLAGS]
        proc, log_path = self._spawn(
            "gateway", [*role, "gateway", "--name", "gw", "--listen", "127.0.0.1:0", *common]
        )
        target = wait_line(proc, log_path, r"listening on (\S+:\d+)", "gateway")
        for i in range(self.n):
            proc, log_path = self._spawn(
                f"worker{i}", [*role, "worker", "--name", f"w{i}", *common]
            )
            wait_line(proc, log_path, "judging from", f"worker {i}")
        from tocsin.collector.bus import PARTITIONS

        share = PARTITIONS // self.n
        deadline = time.monotonic() + 30
        while not all(self._held(i) == share for i in range(self.n)):
            if time.monotonic() > deadline:
                sys.exit("bench_collector: the workers did not share the partitions")
            time.sleep(0.2)
        return target

    def _held(self, i: int) -> int:
        text = (self.work / f"worker{i}.log").read_text(errors="replace")
        return len(re.findall(r"partition \d+ taken", text)) - len(
            re.findall(r"partition \d+ given up", text)
        )

    def pids(self) -> dict[str, list[int]]:
        import psutil

        out: dict[str, list[int]] = {}
        for name, proc in self.procs.items():
            out.setdefault(re.sub(r"\d+$", "", name), []).append(proc.pid)
        pg = psutil.Process(self.postmaster)
        out["postgres"] = [self.postmaster, *(c.pid for c in pg.children(recursive=True))]
        return out

    def stored(self) -> int:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            return int(conn.execute("SELECT count(*) FROM window_rows").fetchone()[0])

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "nats-server"):
            self.procs[name].send_signal(signal.SIGTERM)
            try:
                self.procs[name].wait(30)
            except subprocess.TimeoutExpired:
                print(f"note: {name} did not stop within 30 s; killed", file=sys.stderr)

    def bytes_per_window(self) -> float | None:
        return None

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.cleanup.close()


ROLE_FLAGS = ["--respond", "enforce", "--insecure", "--fleet-guard", "0"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_by_role(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far, summed per role (processes gone since count 0)."""
    out: dict[str, float] = {}
    for role, group in pids.items():
        total = 0.0
        for pid in group:
            with contextlib.suppress(OSError):
                total += proc_figures(pid)[0]
        out[role] = total
    return out


def run_once(args: argparse.Namespace, dep: Embedded | ScaleOut) -> dict[str, Any]:
    """One deployment under the whole load; its figures."""
    gens: list[subprocess.Popen[bytes]] = []
    try:
        target = dep.start()
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
        pids = dep.pids()
        cpu0, stored0 = cpu_by_role(pids), dep.stored()
        gen0 = sum(proc_figures(g.pid)[0] for g in gens)
        mono0 = time.monotonic()
        time.sleep(max(0.0, t0 + args.warmup + args.duration - time.time()))
        cpu1, stored1 = cpu_by_role(pids), dep.stored()
        hwm = max(proc_figures(pid)[1] for group in pids.values() for pid in group)
        gen1 = sum(proc_figures(g.pid)[0] for g in gens)
        elapsed = time.monotonic() - mono0
        cpu_pct = {role: 100 * (cpu1[role] - cpu0[role]) / elapsed for role in cpu0}
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
        # The judging side may still work through what JetStream holds: wait for it.
        created = sum(o["created"] for o in outs)
        drained_by = time.monotonic() + args.drain + 30
        while (stored := dep.stored()) < created and dep.stores and time.monotonic() < drained_by:
            time.sleep(0.5)
        dep.stop()
        bytes_per_window = dep.bytes_per_window()
    finally:
        for g in gens:
            if g.poll() is None:
                g.kill()
                g.wait()
        dep.kill()
    lat = sorted(x for o in outs for x in o["latencies_ms"])
    answered = sorted(a["ms"] for o in outs for a in o["attacks"])
    ends: dict[str, int] = {}
    for o in outs:
        for k2, v in o["ends"].items():
            ends[k2] = ends.get(k2, 0) + v
    judged_per_s = (stored1 - stored0) / elapsed
    gen_late = sorted(x for o in outs for x in o.get("loop_late_ms", []))
    return {
        "windows_per_s": sum(o["acked_in_window"] for o in outs) / args.duration,
        "stored_per_s": judged_per_s,
        "offered_per_s": args.agents * args.rate,
        "ack_ms": {
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "max": lat[-1] if lat else None,
        },
        "attack_ms": {
            "p50": statistics.median(answered) if answered else None,
            "p99": pct(answered, 99),
            "max": answered[-1] if answered else None,
        },
        "attacks": len(attacks),
        # (s after the start of the load, ms to its command), in the attacks' order.
        "attacks_in_order": sorted(
            (attacks[str(int(a["host"].rsplit("-", 1)[1]))], a["ms"])
            for o in outs
            for a in o["attacks"]
        ),
        "attacks_answered": len(answered),
        "attacks_within_1s": sum(1 for ms in answered if ms <= 1000),
        "stray_commands": sum(o["stray_commands"] for o in outs),
        "cpu_pct": sum(cpu_pct.values()),
        "cpu_pct_by_role": cpu_pct,
        "cpu_ms_per_window": {
            role: 10 * pct_ / judged_per_s if judged_per_s else None
            for role, pct_ in cpu_pct.items()
        },
        "generator_cpu_pct": gen_pct,
        "generator_late_ms": {"p99": pct(gen_late, 99), "max": gen_late[-1] if gen_late else None},
        "rss_peak_mb": hwm / 2**20,
        "bytes_per_window": bytes_per_window,
        "created": sum(o["created"] for o in outs),
        "stored": stored,
        "unacked_at_end": sum(o["unacked"] for o in outs),
        "stream_ends": ends,
        "pauses": sum(o.get("pauses", 0) for o in outs),
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
            "attack -> command p50 / p99 / max ms",
            f"{ms(f['attack_ms']['p50'])} / {ms(f['attack_ms'].get('p99'))}"
            f" / {ms(f['attack_ms']['max'])}",
        ),
        ("attacks answered", f"{f['attacks_answered']} of {f['attacks']}"),
        (
            "attacks answered within 1 s",
            f"{f.get('attacks_within_1s', '-')} of {f['attacks']}",
        ),
        ("commands to agents not attacked", str(f["stray_commands"])),
        ("windows/s stored (judging side)", f"{f.get('stored_per_s', 0):.0f}"),
        ("collector CPU % of a core", f"{f['cpu_pct']:.0f}"),
        *(
            (f"  {role} CPU % / ms per window", f"{v:.0f} / {ms(f['cpu_ms_per_window'][role])}")
            for role, v in f.get("cpu_pct_by_role", {}).items()
            if len(f["cpu_pct_by_role"]) > 1
        ),
        ("load generators' CPU %", f"{f.get('generator_cpu_pct', 0):.0f}"),
        (
            "load generators' loop late p99 / max ms",
            f"{ms(f.get('generator_late_ms', {}).get('p99'))}"
            f" / {ms(f.get('generator_late_ms', {}).get('max'))}",
        ),
        ("peak RSS MB (largest process)", f"{f['rss_peak_mb']:.0f}"),
        (
            "bytes on disk / window",
            "-" if f["bytes_per_window"] is None else f"{f['bytes_per_window']:.0f}",
        ),
        ("created / stored / unacked", f"{f['created']} / {f['stored']} / {f['unacked_at_end']}"),
        (
            "nothing lost (created = stored)",
            "-"
            if f["bytes_per_window"] is None and not f["stored"]  # the ack-only server
            else "yes"
            if f["created"] == f["stored"]
            else "NO",
        ),
        (
            "streams ended (as agents saw it)",
            ", ".join(f"{k} {v}" for k, v in f["stream_ends"].items()),
        ),
        ("pauses (stream kept)", str(f.get("pauses", "-"))),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--agents", default="200", help="agents; several (700,1400): one run each, side by side"
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
    ap.add_argument(
        "--scale-out",
        action="store_true",
        help="through a gateway and 1, then 2 workers (NATS JetStream, PostgreSQL) instead",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also run each count against a server that only acks (this machine's ceiling)",
    )
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
    if args.scale_out and (args.baseline or len(counts) > 1):
        ap.error("--scale-out compares one worker with two; it takes no --baseline, one count")
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
        if args.scale_out:
            one = argparse.Namespace(**{**vars(args), "agents": counts[0]})
            for n in (1, 2):
                (work / f"scale{n}").mkdir()
                columns.append((f"{n} worker(s)", run_once(one, ScaleOut(n, work / f"scale{n}"))))
            mine[str(counts[0])] = columns[0][1]
        elif args.baseline and Path(args.baseline).is_file():
            saved = json.loads(Path(args.baseline).read_text())
            if saved.get("params") != params:
                print(f"note: {args.baseline} was measured with {saved.get('params')}")
        elif args.baseline:
            (work / "base").mkdir()
            tree = export_revision(args.baseline, work / "base")
        for n in [] if args.scale_out else counts:
            one = argparse.Namespace(**{**vars(args), "agents": n})
            (work / f"this-{n}").mkdir()
            mine[str(n)] = run_once(one, Embedded(None, work / f"this-{n}"))
            columns.append((f"this tree, {n}", mine[str(n)]))
            if saved is not None:
                theirs = saved.get("runs", {}).get(str(n)) or saved["figures"]
                columns.append((f"{Path(args.baseline).name}, {n}", theirs))
            elif tree is not None:
                (work / f"base-{n}").mkdir()
                base = run_once(one, Embedded(tree, work / f"base-{n}"))
                columns.append((f"{args.baseline}, {n}", base))
            if args.floor:
                (work / f"floor-{n}").mkdir()
                floor = run_once(
                    argparse.Namespace(**{**vars(one), "attack_every": 0}),
                    AckOnly(None, work / f"floor-{n}"),
                )
                columns.append((f"ack-only server, {n}", floor))
    if args.json:
        doc = {"params": params, "figures": mine[str(counts[0])], "runs": mine}
        if args.scale_out:
            doc["two_workers"] = columns[1][1]
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    load = os.getloadavg()
    what = "scale-out (gateway + workers, NATS, PostgreSQL)" if args.scale_out else "collector"
    print(
        f"{what} capacity: {args.agents} agents x {args.rate:g} windows/s for"
        f" {args.duration:g} s (+{args.warmup:g} s warm-up), attack every"
        f" {args.attack_every:g} s, {args.busy:.0%} busy; {args.procs} generator process(es);"
        f" load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    table = [dict(rows(f)) for _, f in columns]
    print(f"{'':38}" + "".join(f"{label:>28}" for label, _ in columns))
    for name, _ in rows(columns[0][1]):
        print(f"{name:38}" + "".join(f"{t.get(name, '-'):>28}" for t in table))
    for label, f in columns:
        if f.get("attacks_in_order"):
            each = ", ".join(f"{at:g} s: {ms:.0f}" for at, ms in f["attacks_in_order"])
            print(f"{label}: attack -> command ms, by when it began: {each}")
    if args.scale_out and columns[0][1]["stored_per_s"]:
        ratio = columns[1][1]["stored_per_s"] / columns[0][1]["stored_per_s"]
        print(
            f"scaling ratio (windows/s stored, 2 workers / 1): {ratio:.2f}; every role shares"
            f" this machine's {os.cpu_count()} cores with the load generator, so the ratio is"
            " bounded by the machine, not by the workers"
        )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
