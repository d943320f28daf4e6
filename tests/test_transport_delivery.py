"""Delivery rules: OTel retries, size limits both sides, rate limits, spool drops reported."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from tocsin.agent.ship import RETRYABLE, HelloInfo, Shipper, fit_window, retry_delay_s
from tocsin.agent.spool import WindowSpool
from tocsin.collector.grpcconf import SERVER_OPTIONS
from tocsin.collector.ratelimit import AgentRateLimits, RateLimits
from tocsin.v1 import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
from tocsin.v1 import telemetry_pb2 as pb

S = grpc.StatusCode


def test_retry_rules_follow_otel() -> None:
    assert {
        S.CANCELLED,
        S.DEADLINE_EXCEEDED,
        S.ABORTED,
        S.OUT_OF_RANGE,
        S.UNAVAILABLE,
        S.DATA_LOSS,
    } == RETRYABLE
    for code in (
        S.INVALID_ARGUMENT,
        S.PERMISSION_DENIED,
        S.UNAUTHENTICATED,
        S.INTERNAL,
        S.RESOURCE_EXHAUSTED,
    ):
        assert retry_delay_s(code, None, 0, 0.5, 15) is None, code
    # RESOURCE_EXHAUSTED is retried when the collector says when.
    assert 2.0 <= retry_delay_s(S.RESOURCE_EXHAUSTED, 2000, 5, 0.5, 15) <= 2.2  # type: ignore
    delays = [retry_delay_s(S.UNAVAILABLE, None, a, 0.5, 15, rand=lambda: 1.0) for a in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 15, 15, 15]  # doubling, capped
    low = retry_delay_s(S.UNAVAILABLE, None, 3, 0.5, 15, rand=lambda: 0.0)
    assert low == 2.0  # jitter spans [half, full]
    # Days of outage: the attempt count passes 1023 and the delay stays capped.
    assert retry_delay_s(S.UNAVAILABLE, None, 5000, 0.5, 15, rand=lambda: 1.0) == 15


def test_oversized_window_is_trimmed_not_refused() -> None:
    w = pb.Window(seq=1, files_modified=5, example_paths=["/srv/" + "x" * 4000] * 100)
    for i in range(50):
        w.top_writers.add(pid=i, cmdline="y" * 2000)
    assert w.ByteSize() > MAX_MESSAGE_BYTES
    assert fit_window(w)
    assert w.ByteSize() < MAX_MESSAGE_BYTES and w.files_modified == 5 and not w.example_paths
    opts = dict(CHANNEL_OPTIONS)
    assert opts["grpc.max_receive_message_length"] == MAX_MESSAGE_BYTES
    assert opts["grpc.max_send_message_length"] == MAX_MESSAGE_BYTES
    server = dict(SERVER_OPTIONS)
    # The server accepts the agents' keepalive pings (every keepalive_time_ms).
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < opts["grpc.keepalive_time_ms"]


def test_rate_limits_per_host_and_hint() -> None:
    now = [0.0]
    lim = AgentRateLimits(
        RateLimits(messages_per_s=10, messages_burst=20, bytes_per_s=1000, bytes_burst=5000),
        clock=lambda: now[0],
    )
    assert all(lim.admit("a", 10) is None for _ in range(20))
    refusal = lim.admit("a", 10)
    assert refusal is not None and refusal.what == "messages" and refusal.retry_after_s > 0
    assert lim.admit("b", 10) is None  # another host has its own buckets
    now[0] += refusal.retry_after_s
    assert lim.admit("a", 10) is None
    assert lim.admit("b", 4990) is None
    big = lim.admit("b", 100)
    assert big is not None and big.what == "bytes"


def test_full_spool_drops_oldest_and_reports_it(tmp_path: Path) -> None:
    spool = WindowSpool(tmp_path / "s.sqlite", max_windows=10)
    shipper = Shipper(
        "127.0.0.1:1", spool, HelloInfo("h", "b", []), lambda c: pb.ActionResult(), heartbeat_s=0.1
    )
    for _ in range(25):
        shipper.submit_window(pb.Window())
    assert spool.depth == 10 and spool.dropped == 15
    assert [w.seq for _, w in spool.pending()] == list(range(16, 26))
    # What the agent says about it: the heartbeat carries depth and drops.
    gen = shipper._requests()
    assert next(gen).HasField("hello")
    msgs = [next(gen) for _ in range(10)]
    assert [m.window.seq for m in msgs] == list(range(16, 26))
    t0 = time.monotonic()
    hb = next(gen)
    assert hb.HasField("heartbeat") and time.monotonic() - t0 < 2
    assert hb.heartbeat.spool_dropped == 15 and hb.heartbeat.spool_depth == 10
