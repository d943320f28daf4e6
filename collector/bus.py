"""The one door to NATS JetStream: what the scale-out gateways and workers say to each other.

Nothing else in the collector imports ``nats``. ``Bus.connect(settings, name)``
connects (reconnecting forever afterwards) and declares, idempotently, what the
roles share:

- stream ``TOCSIN_IN`` (subjects ``tocsin.in.<partition>.<host>``, work-queue
  retention, file storage): each agent window and each ``ActionResult``, as a
  gateway accepted it. A window's message id is ``host/boot/seq``, so a resend
  within JetStream's duplicate window (``duplicate_window_s``) is stored once
  and its publish acknowledgement says ``duplicate``. A host always maps to the
  same one of ``PARTITIONS`` partitions (``partition_of``), so one consumer sees
  all of a host's messages in the order its gateway published them. When the
  stream is full it refuses new messages (``discard new``): the gateway refuses
  the window, the agent keeps it spooled.
- per partition, one durable pull consumer at a time (explicit ack), owned by
  the worker holding that partition's lease;
- key-value bucket ``tocsin_leases``: key ``p<N>`` is the lease of partition N,
  taken with create-if-absent, renewed by compare-and-set on its revision, and
  gone ``lease_ttl_s`` after its holder stopped renewing (the bucket's TTL);
  ``tocsin_workers``: one key per live worker, same TTL (how many share the
  partitions); ``tocsin_streams``: host -> the gateway holding its stream;
- stream ``TOCSIN_PARKED`` (``tocsin.park.<host>``, kept ``command_ttl_s``,
  at most 32 per host): commands for a host no gateway holds.

Plain NATS subjects carry what needs no log: ``tocsin.cmd.<host>`` (a request
answered by the gateway holding the host, which queues the command for its
stream) and ``tocsin.res.<host>`` (every ActionResult, for whoever waits on it:
an operator's command through any gateway).

A host id may hold dots, which NATS reads as token separators: subjects carry
it with ``.`` written ``~`` (never in a host id). Every bus failure a caller
must act on comes out as ``StoreUnavailable`` (``StoreFull`` when the stream is
full): the same refusal an agent gets when the database fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from tocsin.collector.intake import AcceptedWindow
from tocsin.collector.store import StoreFull, StoreUnavailable
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1.errors import ConfigError

log = logging.getLogger("tocsin.collector.bus")

# Fixed for a deployment's life: at most this many workers judge at once (each partition
# has one holder), and a host never changes partition.
PARTITIONS = 16
IN_STREAM = "TOCSIN_IN"
PARK_STREAM = "TOCSIN_PARKED"
MAX_PARKED_PER_HOST = 32

_KIND, _HOST, _BOOT = "Tocsin-Kind", "Tocsin-Host", "Tocsin-Boot"
_START, _END, _SKEW = "Tocsin-Start-Ns", "Tocsin-End-Ns", "Tocsin-Skew-S"
_STREAM_FULL = (10077, 10047, 10027)  # maximum messages / bytes / storage exceeded

# What a bus call may raise when NATS is not there or refuses.
BusErrors = (nats.errors.Error, asyncio.TimeoutError, OSError)


@dataclass(frozen=True)
class BusSettings:
    url: str
    replicas: int = 1  # 3 on a 3-node NATS cluster (docs/scale-out.md)
    max_age_s: float = 7 * 86400.0  # how long an unconsumed window waits for a worker
    max_bytes: int = -1  # the stream's cap (-1: the server's disk); past it, new windows wait
    duplicate_window_s: float = 120.0
    lease_ttl_s: float = 3.0
    ack_wait_s: float = 30.0
    publish_timeout_s: float = 5.0
    command_ttl_s: float = 300.0


@dataclass(frozen=True)
class InMessage:
    """One message of ``TOCSIN_IN``: a window or an action result of a host."""

    host_id: str
    boot_id: str
    window: AcceptedWindow | None
    result: pb.ActionResult | None
    msg: Msg

    async def ack(self) -> None:
        await self.msg.ack()


def partition_of(host_id: str) -> int:
    """The partition a host's messages go to: the same in every process, forever."""
    return zlib.crc32(host_id.encode()) % PARTITIONS


def _token(host_id: str) -> str:
    return host_id.replace(".", "~")


def in_subject(host_id: str) -> str:
    return f"tocsin.in.{partition_of(host_id)}.{_token(host_id)}"


def _unavailable(what: str, exc: BaseException) -> StoreUnavailable:
    code = getattr(exc, "err_code", None)
    text = str(exc) or type(exc).__name__
    if code in _STREAM_FULL:
        return StoreFull(f"bus full: {what}: {text}")
    return StoreUnavailable(f"bus unavailable: {what}: {text}")


class Bus:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        settings: BusSettings,
        leases: KeyValue,
        workers: KeyValue,
        streams: KeyValue,
    ) -> None:
        self.nc, self.js, self.settings = nc, js, settings
        self.leases, self.workers, self.streams = leases, workers, streams

    @classmethod
    async def connect(cls, settings: BusSettings, name: str) -> Bus:
        """Connected, with the streams and buckets declared; ``ConfigError`` if unreachable."""

        async def said(exc: Exception) -> None:
            log.warning("bus: %s", exc or type(exc).__name__)

        try:
            nc = await nats.connect(
                settings.url,
                name=name,
                connect_timeout=3,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=said,
            )
        except (*BusErrors, ValueError) as exc:
            raise ConfigError(f"--bus {settings.url}: cannot connect: {exc}") from None
        js = nc.jetstream(timeout=settings.publish_timeout_s)
        try:
            await cls._declare(js, settings)
            ttl = settings.lease_ttl_s
            leases = await js.create_key_value(bucket="tocsin_leases", ttl=ttl, history=1)
            workers = await js.create_key_value(bucket="tocsin_workers", ttl=ttl, history=1)
            streams = await js.create_key_value(bucket="tocsin_streams", history=1)
        except BusErrors as exc:
            await nc.close()
            raise ConfigError(f"--bus {settings.url}: cannot set up JetStream: {exc}") from None
        return cls(nc, js, settings, leases, workers, streams)

    @staticmethod
    async def _declare(js: JetStreamContext, s: BusSettings) -> None:
        for config in (
            api.StreamConfig(
                name=IN_STREAM,
                subjects=["tocsin.in.>"],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                discard=api.DiscardPolicy.NEW,
                max_age=s.max_age_s,
                max_bytes=s.max_bytes,
                duplicate_window=s.duplicate_window_s,
                num_replicas=s.replicas,
            ),
            api.StreamConfig(
                name=PARK_STREAM,
                subjects=["tocsin.park.>"],
                storage=api.StorageType.FILE,
                discard=api.DiscardPolicy.OLD,
                max_age=s.command_ttl_s,
                max_msgs_per_subject=MAX_PARKED_PER_HOST,
                num_replicas=s.replicas,
            ),
        ):
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await js.update_stream(config)  # settings changed since it was made

    async def close(self) -> None:
        """Flush what was published (acks included), then close."""
        with contextlib.suppress(*BusErrors):
            await self.nc.flush(timeout=2)
        with contextlib.suppress(*BusErrors):
            await self.nc.close()

    # ------------------------------------------------------------ gateway side

    async def publish_window(self, host_id: str, boot_id: str, window: AcceptedWindow) -> bool:
        """Commit a window to ``TOCSIN_IN``; False if JetStream already had it (a resend)."""
        w = window.window
        headers = {
            "Nats-Msg-Id": f"{host_id}/{boot_id}/{window.seq}",
            _KIND: "window",
            _HOST: host_id,
            _BOOT: boot_id,
            _START: str(w.start.ToNanoseconds()),
            _END: str(w.end.ToNanoseconds()),
            _SKEW: repr(window.skew_s),
        }
        try:
            ack = await self.js.publish(in_subject(host_id), window.raw, headers=headers)
        except BusErrors as exc:
            raise _unavailable("window not committed", exc) from exc
        return not ack.duplicate

    async def publish_result(self, host_id: str, result: pb.ActionResult) -> None:
        """An agent's report: to the worker judging its host, and to whoever waits on it."""
        data = result.SerializeToString()
        try:
            await self.nc.publish(f"tocsin.res.{_token(host_id)}", data)
            headers = {_KIND: "result", _HOST: host_id}
            await self.js.publish(in_subject(host_id), data, headers=headers)
        except BusErrors as exc:
            raise _unavailable("action result not committed", exc) from exc

    async def on_results(self, callback: Callable[[pb.ActionResult], None]) -> Subscription:
        async def handle(msg: Msg) -> None:
            result = pb.ActionResult()
            with contextlib.suppress(Exception):
                result.ParseFromString(msg.data)
                callback(result)

        return await self.nc.subscribe("tocsin.res.*", cb=handle)

    async def hold(self, host_id: str, deliver: Callable[[pb.Command], None]) -> Subscription:
        """Take the commands for ``host_id`` (this process holds its stream), parked ones first."""

        async def handle(msg: Msg) -> None:
            cmd = pb.Command()
            try:
                cmd.ParseFromString(msg.data)
            except Exception:
                log.warning("command for %s on the bus is not a Command; dropped", host_id)
                return
            deliver(cmd)
            with contextlib.suppress(*BusErrors):
                await msg.respond(b"held")

        sub = await self.nc.subscribe(f"tocsin.cmd.{_token(host_id)}", cb=handle)
        subject, seq, last = f"tocsin.park.{_token(host_id)}", 1, 0
        while True:
            try:
                parked = await self.js.get_msg(PARK_STREAM, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            cmd = pb.Command()
            with contextlib.suppress(Exception):
                cmd.ParseFromString(parked.data or b"")
                deliver(cmd)
            last = seq = int(parked.seq or 0)
            seq += 1
        if last:
            await self.js.purge_stream(PARK_STREAM, seq=last + 1, subject=subject)
        return sub

    async def announce(self, host_id: str, gateway: str) -> None:
        await self.streams.put(host_id, gateway.encode())

    async def withdraw(self, host_id: str, gateway: str) -> None:
        """Forget that ``gateway`` holds ``host_id`` (unless another gateway took it since)."""
        try:
            entry = await self.streams.get(host_id)
            if entry.value == gateway.encode():
                await self.streams.delete(host_id, last=entry.revision)
        except nats.js.errors.KeyValueError:
            pass

    async def watch_streams(self) -> AsyncIterator[tuple[str, str | None]]:
        """(host, gateway holding it or None), for every host now, then on every change."""
        watcher = await self.streams.watchall()
        async for entry in watcher:
            if entry is None:
                continue
            held = entry.operation is None and entry.value
            yield entry.key, entry.value.decode() if held and entry.value else None

    # ------------------------------------------------------------ both sides

    async def send_command(self, host_id: str, cmd: pb.Command) -> bool:
        """Hand a command to the gateway holding the host (True), else park it (False)."""
        data = cmd.SerializeToString()
        try:
            await self.nc.request(f"tocsin.cmd.{_token(host_id)}", data, timeout=2.0)
            return True
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            pass
        await self.js.publish(f"tocsin.park.{_token(host_id)}", data)
        return False

    # ------------------------------------------------------------ worker side

    async def heartbeat(self, worker: str) -> int:
        """Say this worker is alive; how many are (itself included)."""
        await self.workers.put(worker, b"")
        try:
            return max(len(await self.workers.keys()), 1)
        except nats.js.errors.NoKeysError:
            return 1

    async def take_lease(self, partition: int, worker: str) -> int | None:
        """The lease's revision if this worker now holds it, None if another does."""
        try:
            return await self.leases.create(f"p{partition}", worker.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def renew_lease(self, partition: int, worker: str, revision: int) -> int | None:
        """The new revision, or None if the lease expired (and may be another's now)."""
        try:
            return await self.leases.update(f"p{partition}", worker.encode(), last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.NotFoundError):
            return None

    async def drop_lease(self, partition: int, revision: int) -> None:
        with contextlib.suppress(*BusErrors):
            await self.leases.delete(f"p{partition}", last=revision)

    async def consume(self, partition: int, name: str) -> JetStreamContext.PullSubscription:
        """The partition's consumer, new, from its oldest unacknowledged message.

        A previous holder's consumer is deleted first: what it fetched and did not
        acknowledge is delivered again, in order, to this one (the store and the
        judge stage take a message twice without harm).
        """
        subject = f"tocsin.in.{partition}.*"
        for info in await self.js.consumers_info(IN_STREAM):
            if info.config.filter_subject == subject and info.name != name:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self.js.delete_consumer(IN_STREAM, info.name)
        config = api.ConsumerConfig(
            durable_name=name,
            filter_subject=subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.settings.ack_wait_s,
            max_ack_pending=8192,
        )
        await self.js.add_consumer(IN_STREAM, config)
        return await self.js.pull_subscribe_bind(durable=name, stream=IN_STREAM)

    @staticmethod
    def decode(msg: Msg) -> InMessage:
        """A ``TOCSIN_IN`` message as the worker handles it; ``ValueError`` if it is not one."""
        try:
            return Bus._decode(msg)
        except DecodeError as exc:  # bytes that are no protobuf: not tocsin's either
            raise ValueError(f"not a protobuf message: {exc}") from None

    @staticmethod
    def _decode(msg: Msg) -> InMessage:
        h: dict[str, Any] = msg.headers or {}
        host_id, kind = str(h.get(_HOST, "")), h.get(_KIND)
        if not host_id:
            raise ValueError("no host header")
        if kind == "window":
            window = AcceptedWindow.rebuilt(
                msg.data, int(h[_START]), int(h[_END]), float(h.get(_SKEW, 0.0))
            )
            return InMessage(host_id, str(h[_BOOT]), window, None, msg)
        if kind == "result":
            result = pb.ActionResult()
            result.ParseFromString(msg.data)
            return InMessage(host_id, "", None, result, msg)
        raise ValueError(f"unknown kind {kind!r}")


async def retrying(what: str, call: Callable[[], Awaitable[Any]], pause_s: float = 1.0) -> Any:
    """``call()`` again every ``pause_s`` while the bus is away (logged once per outage)."""
    said = False
    while True:
        try:
            return await call()
        except BusErrors as exc:
            if not said:
                log.warning("%s: bus unavailable (%s); retrying", what, exc or type(exc).__name__)
                said = True
            await asyncio.sleep(pause_s)
