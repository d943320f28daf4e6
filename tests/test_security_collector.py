"""The collector against a hostile agent, a hostile network and hostile text (issue 11).

Every test runs the real ``tocsin-collector`` process and talks to it over real
gRPC, as an agent or an operator would: streams written here with the wire
types, the ``tocsin`` command as a process, a webhook receiver on loopback and,
for the network attacker, a namespace of its own (tests/netns.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from transport_procs import CollectorProc, free_port, wait_for

from fakeagent import encrypting
from netns import netns_unavailable_reason, veth_pair
from receiver import WebhookReceiver
from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc

TESTS = Path(__file__).resolve().parent

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
YEAR_9000_S = 221_845_392_000  # 9000-01-01T00:00:00Z
PAST_9999_S = 1_000_000_000_000  # year 33658
BEFORE_YEAR_1_S = -100_000_000_000


# ---------------------------------------------------------------- helpers


class AgentStream:
    """One Telemetry stream written by hand: hello, then whatever the test sends."""

    def __init__(self, target: str, host_id: str, version: str = "1.0", hostname: str = "") -> None:
        self.target, self.host_id, self.version = target, host_id, version
        self.hostname = hostname
        self.out: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        self.acked = 0
        self.acks = 0
        self.commands: list[pb.Command] = []
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self.ended = asyncio.Event()
        self._got = asyncio.Event()

    async def __aenter__(self) -> AgentStream:
        self.channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        hello = pb.Hello(
            host_id=self.host_id,
            boot_id="boot-1",
            agent_version=self.version,
            hostname=self.hostname,
        )
        await self.out.put(pb.AgentMessage(hello=hello))
        self.call = pb_grpc.TelemetryStub(self.channel).Stream(self._requests())
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.out.put(None)
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.channel.close()

    async def _requests(self) -> AsyncIterator[pb.AgentMessage]:
        while (m := await self.out.get()) is not None:
            yield m

    async def _read(self) -> None:
        try:
            async for resp in self.call:
                if resp.HasField("ack"):
                    self.acked = max(self.acked, resp.ack.seq)
                    self.acks += 1
                elif resp.HasField("command"):
                    self.commands.append(resp.command)
                self._got.set()
        except grpc.aio.AioRpcError as exc:
            self.status, self.details = exc.code(), exc.details() or ""
        self.ended.set()
        self._got.set()

    async def send(self, msg: pb.AgentMessage) -> None:
        await self.out.put(msg)

    async def until(self, what: str, check: Any, timeout_s: float = 15.0) -> Any:
        end = time.monotonic() + timeout_s
        while not (value := check()):
            if self.ended.is_set() or time.monotonic() > end:
                raise AssertionError(f"{what}: stream ended {self.status} {self.details!r}")
            self._got.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._got.wait(), 0.2)
        return value

    async def window(self, w: pb.Window) -> None:
        await self.send(pb.AgentMessage(window=w))
        await self.until(f"ack of window {w.seq}", lambda: self.acked >= w.seq)


def dated(w: pb.Window, end_s: float) -> pb.Window:
    # Set as an agent may send them: protobuf's own range check is the sender's to skip.
    w.end.seconds, w.end.nanos = int(end_s), int(end_s % 1 * 1e9)
    w.start.seconds, w.start.nanos = int(end_s) - 1, w.end.nanos
    return w


def attack(seq: int, end_s: float, pid: int = 4242, name: str = "python3") -> pb.Window:
    """A window of mass encryption by ``pid`` (critical on its own), dated ``end_s``."""
    w = encrypting(seq).window
    w.top_writers[0].pid = w.top_writers[0].tree_root_pid = pid
    w.top_writers[0].name = name
    return dated(w, end_s)


def tocsin(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, str(BIN / "tocsin"), *args, "--insecure"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hooks:
        yield hooks


def collector(tmp_path: Path, *extra: str, respond: str = "enforce") -> CollectorProc:
    proc = CollectorProc(
        tmp_path / "c.db",
        tmp_path / "collector.log",
        f"127.0.0.1:{free_port()}",
        extra=["--insecure", *extra],
    )
    proc.extra += ["--respond", respond]  # the last --respond wins over CollectorProc's "off"
    return proc


def strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------- item 6: --insecure


@pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason()))
def test_insecure_operator_api_answers_loopback_only(tmp_path: Path) -> None:
    """A caller from another namespace is refused; loopback works; agents still stream."""
    with veth_pair("tsec") as (server_ns, remote_ns):
        proc = CollectorProc(
            tmp_path / "c.db",
            tmp_path / "collector.log",
            "0.0.0.0:7443",
            extra=["--insecure"],
            prefix=server_ns.cmd([]),
        )
        proc.start()
        try:
            remote = f"{server_ns.address}:7443"
            # An agent may stream from another address (a trial, a test bench).
            rec = FIXTURES / "encrypt-inplace.jsonl"
            sent = remote_ns.run(
                [
                    str(BIN / "tocsin"),
                    "replay",
                    str(rec),
                    "--speed",
                    "0",
                    "--collector",
                    remote,
                    "--insecure",
                    "--host-id",
                    "remote-fs",
                ]
            )
            assert sent.returncode == 0, sent.stderr

            for where, target in (
                (remote_ns, remote),  # another machine
                (server_ns, remote),  # this machine's own non-loopback address
            ):
                res = tocsin("hosts", "--collector", target, prefix=tuple(where.cmd([])))
                assert res.returncode == 1, res.stdout
                (line,) = res.stderr.strip().splitlines()
                assert "permission_denied" in line and "loopback" in line, line
                res = tocsin(
                    "release",
                    "remote-fs",
                    "--kill",
                    "--collector",
                    target,
                    prefix=tuple(where.cmd([])),
                )
                assert res.returncode == 1 and "permission_denied" in res.stderr, res.stderr

            local = tocsin(
                "hosts", "--json", "--collector", "127.0.0.1:7443", prefix=tuple(server_ns.cmd([]))
            )
            assert local.returncode == 0, local.stderr
            assert [h["host_id"] for h in json.loads(local.stdout)] == ["remote-fs"]
        finally:
            proc.stop()
        log = proc.text()
        assert re.search(r"--insecure: .*operator API answers callers on loopback only", log)
        assert re.search(r"operator call from 10\.231\.\S+ refused", log), log[-2000:]
        assert "release requested" not in log


# One stream held open as host fs1 from wherever it runs: hello, then wait; prints how it ended.
_HOLDER = """
import asyncio, sys, grpc
from tocsin.v1 import CHANNEL_OPTIONS, telemetry_pb2 as pb, telemetry_pb2_grpc as pb_grpc

async def main(target):
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
        hello = pb.AgentMessage(hello=pb.Hello(host_id="fs1", boot_id="boot-1"))
        async def requests():
            yield hello
            await asyncio.sleep(60)
        call = pb_grpc.TelemetryStub(ch).Stream(requests())
        try:
            async for reply in call:
                print("acked", reply.ack.seq, flush=True)
        except grpc.aio.AioRpcError as exc:
            print("ended", exc.code().name, exc.details(), flush=True)

asyncio.run(main(sys.argv[1]))
"""


# An Alarm (a window with evidence, judged at once) naming host fs1; prints how it ended.
_ALARMER = """
import sys, grpc
sys.path.insert(0, sys.argv[2])
from fakeagent import encrypting
from tocsin.v1 import telemetry_pb2 as pb, telemetry_pb2_grpc as pb_grpc

with grpc.insecure_channel(sys.argv[1]) as ch:
    request = pb.AlarmRequest(
        hello=pb.Hello(host_id="fs1", boot_id="boot-1"), window=encrypting(7).window
    )
    try:
        print("judged", pb_grpc.TelemetryStub(ch).Alarm(request, timeout=10).judged, flush=True)
    except grpc.RpcError as exc:
        print("ended", exc.code().name, exc.details(), flush=True)
"""


def _holder(where: Any, target: str, out: Path) -> subprocess.Popen[bytes]:
    return where.popen(
        [sys.executable, "-c", _HOLDER, target], stdout=out.open("wb"), stderr=subprocess.STDOUT
    )


@pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason()))
def test_insecure_stream_cannot_take_a_live_host_id(tmp_path: Path) -> None:
    """Without TLS a live host id is not taken from another address; from its own address
    (an agent back after a network cut) the new stream replaces the old one."""
    with veth_pair("ttak") as (server_ns, remote_ns):
        proc = CollectorProc(
            tmp_path / "c.db",
            tmp_path / "collector.log",
            "0.0.0.0:7443",
            extra=["--insecure"],
            prefix=server_ns.cmd([]),
        )
        proc.start()
        real_out, again_out, impostor_out = (tmp_path / n for n in ("real", "again", "impostor"))
        holders = []
        try:
            holders.append(_holder(server_ns, "127.0.0.1:7443", real_out))
            wait_for("the real agent's ack", lambda: "acked" in real_out.read_text())
            holders.append(_holder(remote_ns, f"{server_ns.address}:7443", impostor_out))
            wait_for("the impostor's refusal", lambda: "ended" in impostor_out.read_text())
            assert "ended ABORTED" in impostor_out.read_text()
            assert "held by a live stream" in impostor_out.read_text()
            # Nor can another address raise an alarm in its name (to get it suspended).
            alarm = subprocess.run(
                remote_ns.cmd(
                    [sys.executable, "-c", _ALARMER, f"{server_ns.address}:7443", str(TESTS)]
                ),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert alarm.stdout.startswith("ended PERMISSION_DENIED"), alarm
            assert "ended" not in real_out.read_text()  # the real stream is still the host's
            holders.append(_holder(server_ns, "127.0.0.1:7443", again_out))
            wait_for("the same address's ack", lambda: "acked" in again_out.read_text())
            wait_for("the old stream replaced", lambda: "ended" in real_out.read_text())
            assert "replaced by a newer stream" in real_out.read_text()
        finally:
            for h in holders:
                h.kill()
                h.wait()
            proc.stop()


# ---------------------------------------------------------------- item 7: the agent's clock


@pytest.mark.parametrize(
    "forged_end_s", [YEAR_9000_S, PAST_9999_S, BEFORE_YEAR_1_S], ids=["9000", "past-9999", "year-0"]
)
def test_forged_date_neither_crashes_nor_hides_the_next_attack(
    tmp_path: Path, receiver: WebhookReceiver, forged_end_s: float
) -> None:
    proc = collector(tmp_path, "--webhook", receiver.url)
    target = proc.start()

    async def scenario() -> list[pb.Command]:
        async with AgentStream(target, "fs9") as agent:
            # A forged tripwire window with a forged date and no writer named: critical.
            fake = pb.Window(seq=1, tripwire_fired=True, tripwire_reason="x")
            await agent.window(dated(fake, forged_end_s))
            await agent.window(dated(pb.Window(seq=2, canary_touches=1), forged_end_s + 5))
            before = len(agent.commands)
            # The real attack, stamped by a clock 130 s fast (within the allowed skew),
            # after the forged incident has had its quiet time.
            for seq in (3, 4):
                await agent.window(attack(seq, time.time() + 130 + seq))
            await agent.until(
                "suspend of the attacker",
                lambda: any(c.kind == "suspend" for c in agent.commands[before:]),
            )
            assert not agent.ended.is_set()
            return agent.commands

    try:
        commands = run(scenario())
    finally:
        proc.stop()
    suspends = [list(c.pids) for c in commands if c.kind == "suspend"]
    assert suspends == [[4242]]
    alerts = wait_for(
        "alerts", lambda: receiver.of("alert") if len(receiver.of("alert")) >= 2 else None
    )
    first = alerts[0]
    assert first["severity"] == "critical" and "clock_skew" in first["reasons"]
    assert first["window_end"].startswith(time.strftime("%Y-", time.gmtime()))
    real = [a for a in alerts if a["process"] and a["process"]["pid"] == 4242]
    assert real and real[0]["severity"] == "critical"
    assert {"action": "suspend", "status": "sent", "pids": [4242]} in real[0]["actions"]
    assert "Traceback" not in proc.text()


# ---------------------------------------------------------------- item 8: reports and lists


def test_action_results_count_only_from_the_host_commanded(tmp_path: Path) -> None:
    proc = collector(tmp_path)
    target = proc.start()

    async def scenario() -> str:
        async with AgentStream(target, "victim") as victim, AgentStream(target, "liar") as liar:
            await victim.window(attack(1, time.time()))
            cmd = await victim.until(
                "suspend", lambda: next((c for c in victim.commands if c.kind == "suspend"), None)
            )
            await liar.window(dated(pb.Window(seq=1), time.time()))
            forged = pb.ActionResult(command_id=cmd.id, kind="suspend", status="failed")
            await liar.send(pb.AgentMessage(action_result=forged))
            local = pb.ActionResult(command_id=cmd.id, kind="kill", status="done", local=True)
            await liar.send(pb.AgentMessage(action_result=local))
            await liar.window(dated(pb.Window(seq=2), time.time()))  # both results are read
            return cmd.id

    try:
        command_id = run(scenario())
        res = tocsin("actions", "--json", "--limit", "50", "--collector", proc.listen)
        assert res.returncode == 0, res.stderr
        actions = {a["action_id"]: a for a in json.loads(res.stdout)}
    finally:
        proc.stop()
    assert actions[command_id]["host_id"] == "victim"
    assert actions[command_id]["status"] == "sent", actions[command_id]
    assert actions[f"liar/{command_id}"]["host_id"] == "liar"
    assert "for command" in proc.text() and "refused" in proc.text()


def _listed_host(
    tmp_path: Path, results: list[pb.ActionResult], **hello: str
) -> tuple[dict[str, Any], str]:
    """The host entry ``tocsin hosts`` lists after one stream (``hello`` fields) sent
    ``results`` and a window, once every pid they name is kept or counted dropped; and
    the collector's log."""
    proc = collector(tmp_path, respond="off")
    target = proc.start()
    pids_sent = sum(len(r.pids) for r in results)

    async def scenario() -> None:
        async with AgentStream(target, "grower", **hello) as agent:
            for result in results:
                await agent.send(pb.AgentMessage(action_result=result))
            await agent.window(dated(pb.Window(seq=1), time.time()))

    try:
        run(scenario())
        # The reports are stored by the stream's own task, beside the window's ack.
        deadline = time.monotonic() + 20
        while True:
            res = tocsin("hosts", "--json", "--collector", proc.listen)
            assert res.returncode == 0, res.stderr
            (host,) = json.loads(res.stdout)
            settled = int(host["suspended_pids_dropped"]) + len(host["suspended_pids"])
            if settled == pids_sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        proc.stop()
    return host, proc.text()


def _local_suspend(command_id: str, pids: range) -> pb.ActionResult:
    return pb.ActionResult(
        command_id=command_id, kind="suspend", status="done", pids=pids, local=True
    )


def test_suspended_pid_list_is_bounded(tmp_path: Path) -> None:
    batches = [range(100_000 + i * 40_000, 100_000 + (i + 1) * 40_000) for i in range(4)]
    host, _ = _listed_host(
        tmp_path, [_local_suspend(f"local-{i}", b) for i, b in enumerate(batches)]
    )
    assert 0 < len(host["suspended_pids"]) <= 256
    assert int(host["suspended_pids_dropped"]) == 160_000 - len(host["suspended_pids"])


def test_a_hello_near_the_message_limit_does_not_break_the_host_list(tmp_path: Path) -> None:
    """One hello's hostname of almost 256 KiB (a message the collector takes), beside the
    most suspended pids a host may keep: one host's entry must not outgrow a reply."""
    hostname = "h" * (256 * 1024 - 256)
    pids = _local_suspend("local-1", range(1_000_000, 1_000_300))
    host, log = _listed_host(tmp_path, [pids], version="v" * 100, hostname=hostname)
    assert host["hostname"] == hostname[:253] and host["agent_version"] == "v" * 64
    assert len(host["suspended_pids"]) == 256
    assert "Traceback" not in log


def test_300_alerts_are_listed_page_by_page(tmp_path: Path) -> None:
    proc = collector(tmp_path, respond="dry-run")
    target = proc.start()
    long_path = "/srv/partage/" + "x" * 900

    async def scenario() -> None:
        async with AgentStream(target, "busy") as agent:
            now = time.time()
            for seq in range(1, 301):
                w = attack(seq, now + seq * 0.1, pid=10_000 + seq)
                w.example_paths[:] = [f"{long_path}/{i}" for i in range(5)]
                await agent.send(pb.AgentMessage(window=w))
            await agent.until("all acked", lambda: agent.acked >= 300, 120)

    try:
        run(scenario())

        def listed() -> tuple[subprocess.CompletedProcess[str], list[Any]] | None:
            res = tocsin("alerts", "--limit", "200", "--json", "--collector", proc.listen)
            assert res.returncode == 0, res.stderr
            alerts = json.loads(res.stdout)
            return (res, alerts) if len(alerts) >= 200 else None

        # Acked once committed; judged (and alerted) just after, beside the stream.
        res, alerts = wait_for("200 alerts judged", listed, 60, 0.5)
        assert len(alerts) == 200 and len({a["alert_id"] for a in alerts}) == 200
        assert len(res.stdout) > 256 * 1024  # more than one message could ever carry
        inc = tocsin("incidents", "--json", "--collector", proc.listen)
        assert inc.returncode == 0, inc.stderr
        assert len(json.loads(inc.stdout)) == 50
    finally:
        proc.stop()


# ---------------------------------------------------------------- the smaller ones


HOSTILE = "evil\n[click](http://attacker.example) <!channel> @all \u202egpj.exe\x1b[31m"


def test_attacker_text_is_escaped_in_logs_chat_and_tables(tmp_path: Path) -> None:
    with WebhookReceiver() as hooks:
        config = tmp_path / "collector.toml"
        config.write_text(
            "".join(
                f'[[webhooks]]\nname = "{fmt}"\nurl = "{hooks.url}/{fmt}"\nformat = "{fmt}"\n'
                for fmt in ("slack", "mattermost", "teams")
            )
        )
        proc = collector(tmp_path, "--config", str(config), respond="dry-run")
        target = proc.start()

        async def scenario() -> None:
            async with AgentStream(target, "fs2", version=HOSTILE) as agent:
                await agent.window(attack(1, time.time(), name=HOSTILE))
                await agent.until("three chat posts", lambda: len(hooks.records) >= 3)

        try:
            run(scenario())
            table = tocsin("alerts", "--collector", proc.listen)
            assert table.returncode == 0, table.stderr
        finally:
            proc.stop()
        for record in hooks.records:
            body = record["body"]
            texts = list(strings(body))
            assert not any("\u202e" in t or "\x1b" in t or "evil\n" in t for t in texts), texts
            assert not any("<!channel>" in t or "@all" in t for t in texts), texts
            if "blocks" not in body:  # Markdown (Mattermost, Teams): no live link either
                assert not any("[click](" in t for t in texts), texts
    log = proc.text()
    assert "\u202e" not in log and "\x1b" not in log
    assert not any(line.startswith("[click]") for line in log.splitlines())
    assert "\u202e" not in table.stdout and "\x1b" not in table.stdout
    rows = table.stdout.splitlines()
    assert len(rows) == 2, rows  # the header and one alert: no forged row


@pytest.mark.parametrize(
    ("flags", "config"),
    [
        (["--silent-after", "nan"], ""),
        (["--max-windows-per-s", "inf"], ""),
        ([], "webhook_retry_max_s = inf\n"),
        ([], "silent_after = nan\n"),
    ],
)
def test_config_refuses_nan_and_inf(tmp_path: Path, flags: list[str], config: str) -> None:
    args = [
        str(BIN / "tocsin-collector"),
        "--listen",
        "127.0.0.1:0",
        "--db",
        str(tmp_path / "c.db"),
    ]
    args += ["--insecure", *flags]
    if config:
        (tmp_path / "c.toml").write_text(config)
        args += ["--config", str(tmp_path / "c.toml")]
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the collector started with a non-finite number")
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert "finite" in line


def test_shipped_config_has_no_working_secret(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            str(BIN / "tocsin-collector"),
            "--config",
            str(ROOT / "deploy" / "collector.toml"),
            "--db",
            str(tmp_path / "c.db"),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert "placeholder" in line and "head -c 32 /dev/urandom" in line, line
    # The README's own step makes a secret the collector takes.
    readme = (ROOT / "README.md").read_text()
    (step,) = [ln for ln in readme.splitlines() if ln.startswith("sed -i") and "whsec_" in ln]
    copy = tmp_path / "collector.toml"
    copy.write_text((ROOT / "deploy" / "collector.toml").read_text())
    subprocess.run(["sh", "-c", step.replace("/etc/tocsin/collector.toml", str(copy))], check=True)
    from tocsin.collector.cli import load_config
    from tocsin.collector.webhook import parse_secret

    assert len(parse_secret(load_config(str(copy))["webhook_secret"])) == 32


def test_webhook_urls_stay_out_of_logs_and_metrics(tmp_path: Path) -> None:
    secret_url = f"http://127.0.0.1:{free_port()}/services/T0001/B0002/SeCrEtToKeN"
    metrics = f"127.0.0.1:{free_port()}"
    proc = collector(
        tmp_path,
        "--webhook",
        secret_url,
        "--webhook-format",
        "slack",
        "--metrics",
        metrics,
        respond="dry-run",
    )
    target = proc.start()

    async def scenario() -> None:
        async with AgentStream(target, "fs3") as agent:
            await agent.window(attack(1, time.time()))
            await agent.until("a failed delivery", lambda: "attempt 1 failed" in proc.text())

    try:
        run(scenario())
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as resp:
            exposition = resp.read().decode()
    finally:
        proc.stop()
    assert 'destination="http://127.0.0.1:' in exposition
    assert "SeCrEtToKeN" not in exposition and "T0001" not in exposition
    assert "SeCrEtToKeN" not in proc.text() and "T0001" not in proc.text()
