"""Stream a recording into a collector as if its agent were sending it live.

Contract: ``replay(path, channel, speed)`` splits the recording at each ``hello``
(one agent boot each), opens one Telemetry stream per boot, sends the hello, then
every message in order; windows are paced by their own end timestamps divided by
``speed`` (0: as fast as possible), and re-dated as a live agent would date them:
the recording is shifted so that its first window ends when the replay starts (the
collector trusts no clock further than its allowed skew from its own, so a recording
keeps its own dates only if it is fresh). With ``keep_dates`` the windows keep the
recording's own dates (a later night of a recorded job, shifted ahead by the caller:
the collector must then allow that much skew). Before closing a stream it waits
until the collector acked the last window sent on it (at most ``ack_timeout_s``,
then ``WireError``). Commands the collector sends back are counted, never executed.
``host_id`` replaces the recorded one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tocsin.collector.decide import ts_s
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc
from tocsin.v1.errors import WireError
from tocsin.v1.recording import read_recording


@dataclass
class ReplayStats:
    windows_sent: int = 0
    windows_acked: int = 0
    streams: int = 0
    commands: list[str] = field(default_factory=list)


def split_boots(messages: Iterable[pb.AgentMessage]) -> list[list[pb.AgentMessage]]:
    boots: list[list[pb.AgentMessage]] = []
    for msg in messages:
        if msg.HasField("hello"):
            boots.append([msg])
        elif not boots:
            raise WireError("recording does not start with a hello")
        else:
            boots[-1].append(msg)
    return boots


def _redated(msg: pb.AgentMessage, shift_s: float) -> pb.AgentMessage:
    """A copy of a window message with its start and end moved by ``shift_s``."""
    out = pb.AgentMessage()
    out.CopyFrom(msg)
    for ts in (out.window.start, out.window.end):
        ts.FromNanoseconds(int((ts_s(ts) + shift_s) * 1e9))
    return out


async def replay(
    path: Path,
    channel: grpc.aio.Channel,
    speed: float = 1.0,
    host_id: str | None = None,
    ack_timeout_s: float = 30.0,
    keep_dates: bool = False,
) -> ReplayStats:
    stats = ReplayStats()
    for boot in split_boots(read_recording(path)):
        await _replay_boot(boot, channel, speed, host_id, ack_timeout_s, stats, keep_dates)
    return stats


async def _replay_boot(
    messages: list[pb.AgentMessage],
    channel: grpc.aio.Channel,
    speed: float,
    host_id: str | None,
    ack_timeout_s: float,
    stats: ReplayStats,
    keep_dates: bool,
) -> None:
    hello = messages[0]
    if host_id:
        hello = pb.AgentMessage()
        hello.CopyFrom(messages[0])
        hello.hello.host_id = host_id
    boot_id = hello.hello.boot_id
    call = pb_grpc.TelemetryStub(channel).Stream()
    stats.streams += 1
    acked = 0
    acked_changed = asyncio.Event()

    async def read() -> None:
        nonlocal acked
        async for resp in call:
            if resp.HasField("ack") and resp.ack.boot_id == boot_id:
                acked = max(acked, resp.ack.seq)
                acked_changed.set()
            elif resp.HasField("command"):
                stats.commands.append(resp.command.kind)

    reader = asyncio.create_task(read())
    last_seq = 0
    try:
        await call.write(hello)
        first_ts: float | None = None
        started = time.monotonic()
        shift_s = 0.0
        for msg in messages[1:]:
            if msg.HasField("window"):
                end_s = ts_s(msg.window.end)
                if first_ts is None:
                    first_ts, shift_s = end_s, 0.0 if keep_dates else time.time() - end_s
                if shift_s:
                    msg = _redated(msg, shift_s)
                if speed > 0:
                    delay = (end_s - first_ts) / speed - (time.monotonic() - started)
                    if delay > 0:
                        await asyncio.sleep(delay)
                last_seq = max(last_seq, int(msg.window.seq))
                stats.windows_sent += 1
            if msg.HasField("goodbye"):
                continue  # sent after the final ack, so the stream stays open for it
            if reader.done():
                break
            await call.write(msg)
        deadline = time.monotonic() + ack_timeout_s
        while acked < last_seq and not reader.done():
            acked_changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(acked_changed.wait(), remaining)
            except TimeoutError:
                break
        if reader.done() and reader.exception() is not None:
            exc = reader.exception()
            detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            raise WireError(f"collector ended the stream: {detail}")
        if acked < last_seq:
            raise WireError(f"collector acked seq {acked} of {last_seq} within {ack_timeout_s} s")
        await call.write(pb.AgentMessage(goodbye=pb.Goodbye(reason="replay finished")))
        await call.done_writing()
        await asyncio.wait_for(asyncio.shield(reader), 5)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    stats.windows_acked += sum(
        1 for m in messages if m.HasField("window") and m.window.seq <= acked
    )
