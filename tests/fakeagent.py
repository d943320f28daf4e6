"""A fake agent for tests: a real gRPC client that sends a hello, attack windows, and
answers 'done' to every command it receives."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1 import telemetry_pb2 as pb
from tocsin.v1 import telemetry_pb2_grpc as pb_grpc

T0 = 1_700_000_000
# The identity of pid 4242 in these windows (tocsin.v1 ProcessSample).
STARTED_AT_TICKS = 987_654
KERNEL_BOOT_ID = "5a1c7e0e-0b5b-4f6e-9d51-8d9e2f1a0c42"


def encrypting(seq: int, *, drill: bool = False) -> pb.AgentMessage:
    """A window that looks like mass encryption by pid 4242 (python3)."""
    w = pb.Window(
        seq=seq,
        files_modified=60,
        files_renamed=60,
        files_probed=60,
        files_high_entropy=60,
        files_incompressible=60,
        files_type_destroyed=55,
        mean_entropy=7.99,
        encrypted_twins=50,
        new_extensions=1,
        top_new_extension=".locked",
        top_new_extension_dirs=8,
        repeated_name="LISEZ-MOI.txt",
        repeated_name_dirs=6,
        bytes_written=30_000_000,
        dirs_touched=8,
        drill=drill,
        example_paths=["/srv/partage/Finances/budget.xlsx.locked"],
    )
    w.start.seconds, w.end.seconds = T0 + seq, T0 + seq + 1
    w.top_writers.add(
        pid=4242,
        ppid=1,
        name="python3",
        exe="/usr/bin/python3",
        tree_root_pid=4242,
        files_touched=60,
        files_type_destroyed=55,
        start_ticks=STARTED_AT_TICKS,
        tree_root_start_ticks=STARTED_AT_TICKS,
        kernel_boot_id=KERNEL_BOOT_ID,
    )
    return pb.AgentMessage(window=w)


class FakeAgent:
    """A real gRPC client: hello, windows, and 'done' for every command it gets."""

    def __init__(self, port: int, host_id: str) -> None:
        self.port, self.host_id = port, host_id
        self.commands: list[pb.Command] = []
        self.stop = asyncio.Event()

    async def run(self, windows: int = 3) -> None:
        out: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        await out.put(pb.AgentMessage(hello=pb.Hello(host_id=self.host_id, boot_id="b1")))
        for seq in range(1, windows + 1):
            await out.put(encrypting(seq))

        async def requests() -> Any:
            while (m := await out.get()) is not None:
                yield m

        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{self.port}", options=CHANNEL_OPTIONS
        ) as ch:
            call = pb_grpc.TelemetryStub(ch).Stream(requests())

            async def read() -> None:
                async for resp in call:
                    if resp.HasField("command"):
                        cmd = resp.command
                        self.commands.append(cmd)
                        await out.put(
                            pb.AgentMessage(
                                action_result=pb.ActionResult(
                                    command_id=cmd.id,
                                    kind=cmd.kind,
                                    status="done",
                                    detail=f"{cmd.kind} done",
                                    pids=list(cmd.pids),
                                )
                            )
                        )

            reader = asyncio.create_task(read())
            await self.stop.wait()
            await out.put(None)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    def kinds(self) -> list[str]:
        return [c.kind for c in self.commands]
