"""``tocsin webhook test``: send one signed test event to each configured receiver, now.

    tocsin webhook test --config /etc/tocsin/collector.toml
    tocsin webhook test --webhook URL [--format FMT] [--secret whsec_...]

Contract: builds the destinations exactly as the collector does (from its
config file, or from one URL), sends each one event ``test`` directly (no
outbox, one attempt, signed when a secret is set) and prints one line per
destination: ``<dest> (<format>): delivered (HTTP 200)`` or ``...: FAILED
(<why>)``. Exit 0 when every destination answered 2xx, 1 otherwise, 2 for a
bad flag or config.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import time
import uuid
from collections.abc import Sequence
from typing import NoReturn

from tocsin.collector.outbox import Destination, deliver_once, destination
from tocsin.v1.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _parser() -> _Parser:
    p = _Parser(prog="tocsin webhook", description="webhook tools")
    sub = p.add_subparsers(dest="what", required=True, parser_class=_Parser)
    t = sub.add_parser("test", help="send a signed test event to each receiver")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="the collector's TOML config (all its webhooks)")
    src.add_argument("--webhook", help="one receiver URL")
    t.add_argument(
        "--format",
        default="generic",
        help="generic, slack, mattermost, teams or alertmanager (with --webhook)",
    )
    t.add_argument("--secret", help="whsec_<base64> signing key (with --webhook)")
    return p


def sample_event() -> dict[str, object]:
    from tocsin.collector.events import WebhookTestEvent

    return WebhookTestEvent(socket.gethostname(), time.time(), getpass.getuser()).to_json()


def _destinations(args: argparse.Namespace) -> list[Destination]:
    if args.webhook:
        spec: dict[str, object] = {"url": args.webhook, "format": args.format}
        if args.secret:
            spec["secret"] = args.secret
        return [destination(spec, "--webhook")]
    from tocsin.collector.cli import destinations, load_config

    conf = load_config(args.config)
    merged = {
        "webhook": conf.get("webhook", []),
        "webhooks": conf.get("webhooks", []),
        "webhook_format": conf.get("webhook_format", "generic"),
        "webhook_secret": conf.get("webhook_secret"),
    }
    found = destinations(merged)
    if not found:
        raise ConfigError(f"--config {args.config}: no webhook configured")
    return found


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    failures = 0
    for dest in _destinations(args):
        msg_id = f"msg_test_{uuid.uuid4().hex}"
        status, error = deliver_once(dest, msg_id, sample_event())
        signed = "signed" if dest.key else "unsigned"
        if 200 <= status < 300:
            print(
                f"{dest.label} ({dest.format}, {signed}): delivered (HTTP {status}, "
                f"webhook-id {msg_id})"
            )
        else:
            failures += 1
            print(f"{dest.label} ({dest.format}, {signed}): FAILED ({error or status})")
    return 1 if failures else 0
