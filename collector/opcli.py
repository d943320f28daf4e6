"""``tocsin``: the operator's command.

    tocsin hosts   --collector HOST:PORT [--insecure | --tls-*] [--json]
    tocsin alerts  [--host ID] [--limit N] --collector HOST:PORT ... [--json]
    tocsin incidents [--host ID] [--limit N] --collector HOST:PORT ... [--json]
    tocsin actions [--host ID] [--limit N] --collector HOST:PORT ... [--json]  (the audit)
    tocsin isolate HOST --collector HOST:PORT ...
    tocsin release HOST [--resume | --kill] --collector HOST:PORT ...
    tocsin console login --collector HOST:PORT ...   (a one-time link to the web console)
    tocsin replay FILE --collector HOST:PORT [--speed N] [--host-id ID] [--keep-dates] ...
    tocsin train ...          (see tocsin.collector.train)
    tocsin webhook test [--config F | --webhook URL --format F --secret S]
    tocsin certs init --dir D | certs issue NAME --dir D [--collector] [--san H]

Errors are one line on stderr ("tocsin: error: ...") and exit status 2 for bad
flags or files, 1 when the collector cannot be reached or refuses. Lists are
fetched page by page (``page_token``) until ``--limit`` items are in, so no
reply ever exceeds the message limit; what the agents wrote (process names,
details) is printed through ``tocsin.v1.text.printable``.

Every flag that names the collector or the operator's TLS files has an
environment default (``ENV_DEFAULTS``), so a sysadmin exports them once in a
shell (or ~/.profile) and types ``tocsin hosts``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format

from tocsin.collector import optables
from tocsin.collector.grpcconf import TlsFiles, client_channel
from tocsin.v1 import operator_pb2 as op
from tocsin.v1 import operator_pb2_grpc as op_grpc
from tocsin.v1.errors import ConfigError, TocsinError
from tocsin.v1.text import printable

PROG = "tocsin"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


# flag destination -> environment variable giving its default
ENV_DEFAULTS = {
    "collector": "TOCSIN_COLLECTOR",
    "tls_ca": "TOCSIN_TLS_CA",
    "tls_cert": "TOCSIN_TLS_CERT",
    "tls_key": "TOCSIN_TLS_KEY",
}


def build_parser() -> _Parser:
    env = {k: os.environ.get(v) or None for k, v in ENV_DEFAULTS.items()}
    common = _Parser(add_help=False)
    common.add_argument(
        "--collector",
        required=env["collector"] is None,
        default=env["collector"],
        help="HOST:PORT of the collector (default: $TOCSIN_COLLECTOR)",
    )
    common.add_argument("--insecure", action="store_true", help="no TLS")
    for flag in ("tls_ca", "tls_cert", "tls_key"):
        common.add_argument(
            "--" + flag.replace("_", "-"),
            dest=flag,
            type=Path,
            default=Path(env[flag]) if env[flag] else None,
            help=f"(default: ${ENV_DEFAULTS[flag]})",
        )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--timeout", type=float, default=15.0, help="seconds to wait")
    p = _Parser(prog=PROG, description="tocsin operator commands")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("hosts", parents=[common], help="list hosts")
    alerts = sub.add_parser("alerts", parents=[common], help="list alerts, newest first")
    alerts.add_argument("--host", default="")
    alerts.add_argument("--limit", type=int, default=20)
    for name, what in (
        ("incidents", "incidents (alerts of one process tree) and their actions"),
        ("actions", "every action, who asked, when, the outcome reported"),
    ):
        listing = sub.add_parser(name, parents=[common], help=what)
        listing.add_argument("--host", default="")
        listing.add_argument("--limit", type=int, default=50)
    iso = sub.add_parser("isolate", parents=[common], help="isolate a host now")
    iso.add_argument("host")
    rel = sub.add_parser("release", parents=[common], help="lift a host's isolation")
    rel.add_argument("host")
    what = rel.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="resume suspended processes")
    what.add_argument("--kill", action="store_true", help="kill suspended processes")
    con = sub.add_parser("console", help="the web console")
    con_sub = con.add_subparsers(dest="console_command", required=True, parser_class=_Parser)
    con_sub.add_parser(
        "login", parents=[common], help="print a one-time sign-in link (valid 5 minutes)"
    )
    rep = sub.add_parser("replay", parents=[common], help="stream a recording into a collector")
    rep.add_argument("file", type=Path)
    rep.add_argument("--speed", type=float, default=1.0, help="time factor; 0 = no pacing")
    rep.add_argument("--host-id", dest="host_id")
    rep.add_argument(
        "--keep-dates",
        action="store_true",
        help="keep the recording's own window dates (the collector must allow the skew)",
    )
    return p


def _when(ts: Any) -> str:
    if not ts.seconds:
        return "-"
    return dt.datetime.fromtimestamp(ts.seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


async def fetch_all(
    call: Callable[..., Awaitable[Any]], request: Any, items: str, limit: int, timeout: float
) -> list[Any]:
    """Up to ``limit`` items (0: all) of a paginated list call, page after page.

    Pages are offsets into a newest-first list: an item that arrives while we page
    pushes the others back, so one already seen may come again; it is kept once.
    """
    got: dict[str, Any] = {}
    while True:
        if limit:
            request.limit = limit - len(got)
        reply = await call(request, timeout=timeout)
        for item in getattr(reply, items):
            key = item.host_id if items == "hosts" else getattr(item, items[:-1] + "_id")
            got.setdefault(key, item)
        if not reply.next_page_token or (limit and len(got) >= limit):
            found = list(got.values())
            return found[:limit] if limit else found
        request.page_token = reply.next_page_token


async def _run(args: argparse.Namespace) -> int:
    tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
    async with client_channel(args.collector, tls, args.insecure) as channel:
        if args.command == "replay":
            from tocsin.collector.replay import replay

            if not args.file.is_file():
                raise ConfigError(f"{args.file}: no such recording")
            if args.speed < 0:
                raise ConfigError("--speed must be >= 0")
            stats = await replay(
                args.file, channel, args.speed, args.host_id, keep_dates=args.keep_dates
            )
            print(
                f"windows sent {stats.windows_sent}, acked {stats.windows_acked}"
                f" ({stats.streams} stream(s), commands received: {len(stats.commands)})"
            )
            return 0
        stub = op_grpc.OperatorStub(channel)
        t = args.timeout
        if args.command == "console":
            link = await stub.ConsoleLink(
                op.ConsoleLinkRequest(operator=getpass.getuser()), timeout=t
            )
            if args.json:
                print(json.dumps({"url": link.url, "valid_s": link.valid_s}))
            else:
                print(f"Open within {link.valid_s // 60} minutes (it works once):\n{link.url}")
            return 0
        if args.command == "hosts":
            hosts = await fetch_all(stub.ListHosts, op.ListHostsRequest(), "hosts", 0, t)
            if args.json:
                print(json.dumps([_dict(h) for h in hosts], indent=2))
                return 0
            rows = [
                [
                    "HOST",
                    "CONNECTED",
                    "LAST SEEN",
                    "WINDOWS",
                    "ISOLATED",
                    "SUSPENDED",
                    "OPEN ALERTS",
                ]
            ]
            for h in hosts:
                rows.append(
                    [
                        h.host_id,
                        "yes" if h.connected else "no",
                        _when(h.last_seen),
                        str(h.windows),
                        "YES" if h.isolated else "no",
                        ",".join(map(str, h.suspended_pids)) or "-",
                        str(h.open_alerts),
                    ]
                )
            print(optables.table(rows))
            return 0
        if args.command == "alerts":
            alerts = await fetch_all(
                stub.ListAlerts, op.ListAlertsRequest(host_id=args.host), "alerts", args.limit, t
            )
            if args.json:
                print(json.dumps([json.loads(a.json) for a in alerts], indent=2))
                return 0
            rows = [["DETECTED", "HOST", "SEVERITY", "SCORE", "PROCESS", "REASONS"]]
            for a in alerts:
                rows.append(
                    [
                        _when(a.detected_at),
                        a.host_id,
                        a.severity,
                        f"{a.score:.2f}",
                        a.process or "-",
                        " ".join(a.reasons),
                    ]
                )
            print(optables.table(rows))
            return 0
        if args.command in ("actions", "incidents"):
            want = args.limit if args.command == "actions" else args.limit * 20
            acts = await fetch_all(
                stub.ListActions, op.ListActionsRequest(host_id=args.host), "actions", want, t
            )
            if args.command == "actions":
                listed = acts[: args.limit]
                if args.json:
                    print(json.dumps([_dict(a) for a in listed], indent=2))
                else:
                    print(optables.table(optables.actions_rows(listed)))
                return 0
            alerts = await fetch_all(
                stub.ListAlerts, op.ListAlertsRequest(host_id=args.host), "alerts", 1000, t
            )
            items = optables.incidents(alerts, acts)[: args.limit]
            if args.json:
                print(json.dumps(items, indent=2))
            else:
                print(optables.table(optables.incident_rows(items)))
            return 0
        req = op.HostActionRequest(host_id=args.host, operator=getpass.getuser(), timeout_s=t)
        if args.command == "isolate":
            reply = await stub.Isolate(req, timeout=t + 5)
        else:
            req.processes = "resume" if args.resume else "kill" if args.kill else "keep"
            reply = await stub.Release(req, timeout=t * 2 + 5)
        if args.json:
            print(json.dumps(_dict(reply), indent=2))
        else:
            print(
                f"{args.command} {args.host}: {printable(reply.status)}"
                + (f" ({printable(reply.detail)})" if reply.detail else "")
            )
            if reply.still_suspended:
                pids = ", ".join(map(str, reply.still_suspended))
                print(f"still stopped: {pids} (tocsin release {args.host} --resume or --kill)")
            elif args.command == "release":
                print("no process is stopped by tocsin")
            recent = await stub.ListActions(
                op.ListActionsRequest(host_id=args.host, limit=5), timeout=t
            )
            if recent.actions:
                print()
                print(optables.table(optables.actions_rows(recent.actions)))
        return 0 if reply.status in ("done", "dry-run") else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "certs":
        from tocsin.collector.certs import main as certs_main

        return certs_main(argv[1:])
    if argv and argv[0] == "train":
        from tocsin.collector.train import main as train_main

        status: int = train_main(argv[1:])
        return status
    try:
        if argv and argv[0] == "webhook":
            from tocsin.collector.webhooktest import main as webhook_main

            return webhook_main(argv[1:])
        args = build_parser().parse_args(argv)
        return asyncio.run(_run(args))
    except TocsinError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_status
    except grpc.aio.AioRpcError as exc:
        print(
            f"{PROG}: error: collector {exc.code().name.lower()}: {printable(exc.details())}",
            file=sys.stderr,
            flush=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
