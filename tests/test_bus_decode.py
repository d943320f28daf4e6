"""A message on the windows stream that is not tocsin's (a rogue publisher with bus
rights, a corrupted record) is refused with ValueError, which the worker terminates
and logs; it never stops a partition's judging."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from tocsin.collector.bus import Bus
from tocsin.v1 import telemetry_pb2 as pb


def _msg(data: bytes, **headers: str) -> Msg:
    return Msg(_client=None, subject="tocsin.in.0.fs1", data=data, headers=headers)  # type: ignore[arg-type]


WINDOW = {"Tocsin-Kind": "window", "Tocsin-Host": "fs1", "Tocsin-Boot": "b1"}
TIMES = {"Tocsin-Start-Ns": "1", "Tocsin-End-Ns": "2"}


@pytest.mark.parametrize(
    "msg",
    [
        _msg(b"\xff\xff\xff", **WINDOW, **TIMES),  # not a protobuf
        _msg(b"\x0a\x05ab", **{"Tocsin-Kind": "result", "Tocsin-Host": "fs1"}),  # truncated
        _msg(b"", **WINDOW, **{"Tocsin-Start-Ns": "soon", "Tocsin-End-Ns": "2"}),
        _msg(b"", **{"Tocsin-Kind": "window", "Tocsin-Host": "fs1"}),  # no boot, no times
        _msg(b"", **{"Tocsin-Kind": "command", "Tocsin-Host": "fs1"}),
        _msg(b""),
    ],
    ids=["garbage-window", "truncated-result", "bad-time", "missing-headers", "kind", "bare"],
)
def test_a_message_not_tocsins_is_a_value_error(msg: Msg) -> None:
    with pytest.raises((ValueError, KeyError)):
        Bus.decode(msg)


def test_a_window_decodes() -> None:
    raw = pb.Window(seq=7, files_modified=3).SerializeToString()
    got = Bus.decode(_msg(raw, **WINDOW, **TIMES))
    assert got.host_id == "fs1" and got.window is not None and got.window.window.seq == 7
