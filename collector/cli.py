"""``tocsin-collector``: run the collector.

    tocsin-collector [gateway|worker] --listen HOST:PORT --store PATH|postgresql://...
                     --webhook URL [--webhook URL ...]
                     --respond off|dry-run|enforce [--config FILE] [--insecure]
                     [--tls-ca F --tls-cert F --tls-key F] [--model PATH]
                     [--allow CIDR ...] [--log-level LEVEL] [--log-format text|json]
                     [--webhook-secret whsec_... --webhook-format FMT]
                     [--fleet-guard N] [--metrics HOST:PORT] [--max-clock-skew-s S]
                     [--baseline-learning-days DAYS]

``--store`` is where the collector keeps its rows: an SQLite file (the
embedded default; ``--db PATH`` says the same) or a PostgreSQL URL
(``postgresql://user@host/dbname``, for a department-sized collector; libpq
reads a password from ``~/.pgpass`` or ``PGPASSWORD`` as well as from the
URL, and error lines never show it).
The TOML config file takes the same keys (``listen``, ``store`` or ``db``, ``webhook`` as a
list, ``respond``, ``insecure``, ``tls_ca``, ``tls_cert``, ``tls_key``,
``model``, ``allow``, ``log_level``, ``log_format``, ``webhook_secret``,
``webhook_format``, ``fleet_guard``, ``metrics``, ``webhook_retry_initial_s``,
``webhook_retry_max_s``, ``webhook_max_age_s``, ``retention_days``,
``rollup_days``, ``disk_warn_percent``, ``max_clock_skew_s``, ``behind_windows``,
``behind_lag_ms``, ``pushback_s`` (when the collector counts as behind and pushes
quiet agents back, and for how long: ``tocsin.collector.admission``),
``baseline_learning_days`` (how long each host is scored with the shipped
model before it learns its own baseline; 7), ...) plus tables only a file
can hold: ``[[webhooks]]`` (url, format, secret, events, min_severity,
timeout_s, name) and ``[[hooks]]`` (path, args, timeout_s, on, name); flags
override it. Every problem with
flags, config, database, model or address is one line on stderr
("tocsin-collector: error: ...") and exit status 2: a number that is not
finite (``nan``, ``inf``) is such a problem, and so is a webhook secret left
at the example config's placeholder. Once bound, it logs
"listening on HOST:PORT (respond=MODE, model=...)" with the real port (useful
with port 0). SIGTERM or SIGINT stop it gracefully.

The scale-out roles (docs/scale-out.md) take the same settings plus ``--bus
nats://...`` (keys ``bus``, ``name``, ``bus_replicas``), and their
``--store`` must be PostgreSQL (``postgresql://...``), the one every gateway
and worker shares: ``tocsin-collector gateway`` serves agents and operators
on ``--listen``; ``tocsin-collector worker`` listens on nothing and logs
"worker NAME judging from URL" once it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import math
import os
import re
import signal
import socket
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from tocsin.collector.grpcconf import (
    TlsFiles,
    is_loopback,
    parse_hostport,
    require_tls_or_insecure,
)
from tocsin.collector.respond import MODES
from tocsin.collector.webhook import parse_secret, redact_url
from tocsin.v1.errors import ConfigError, TocsinError

PROG = "tocsin-collector"
# Young collections every 50,000 allocations (default 700), the middle one every
# 20 of those, a full one every 100 middle ones at most (``settle_garbage_collection``).
GC_THRESHOLDS = (50_000, 20, 100)
log = logging.getLogger("tocsin.collector")

_KEYS = {
    "listen": str,
    "db": str,
    "store": str,
    "webhook": list,
    "respond": str,
    "insecure": bool,
    "tls_ca": str,
    "tls_cert": str,
    "tls_key": str,
    "model": str,
    "allow": list,
    "log_level": str,
    "silent_after": (int, float),
    "max_windows_per_s": (int, float),
    "max_bytes_per_s": (int, float),
    "log_format": str,
    "webhook_secret": str,
    "webhook_format": str,
    "webhooks": list,
    "hooks": list,
    "fleet_guard": int,
    "metrics": str,
    "webhook_retry_initial_s": (int, float),
    "webhook_retry_max_s": (int, float),
    "webhook_max_age_s": (int, float),
    "max_clock_skew_s": (int, float),
    "retention_days": (int, float),
    "rollup_days": (int, float),
    "disk_warn_percent": (int, float),
    "console": str,
    "console_url": str,
    "language": str,
    "baseline_learning_days": (int, float),
    "behind_windows": int,
    "behind_lag_ms": (int, float),
    "pushback_s": (int, float),
    "bus": str,
    "name": str,
    "bus_replicas": int,
}

# The scale-out roles (docs/scale-out.md): the first argument names one; their own keys.
ROLES = ("gateway", "worker")
SCALE_KEYS = ("bus", "name", "bus_replicas")


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises ``ConfigError`` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser(role: str = "") -> OneLineParser:
    prog = f"{PROG} {role}".strip()
    p = OneLineParser(prog=prog, description="tocsin collector: ingest, judge, respond.")
    p.add_argument("--listen", help="HOST:PORT to serve agents and operators on")
    p.add_argument("--store", help="where rows are kept: an SQLite file or a postgresql:// URL")
    p.add_argument("--db", help="SQLite database file (the same as --store PATH)")
    p.add_argument("--webhook", action="append", help="URL to POST alerts to (repeatable)")
    p.add_argument("--respond", help="off, dry-run or enforce")
    p.add_argument("--config", help="TOML file with the same keys")
    p.add_argument("--insecure", action="store_true", default=None, help="no TLS")
    p.add_argument("--tls-ca", dest="tls_ca")
    p.add_argument("--tls-cert", dest="tls_cert")
    p.add_argument("--tls-key", dest="tls_key")
    p.add_argument("--model", help="model card (.json beside its .npz); default: shipped")
    p.add_argument("--allow", action="append", help="CIDR kept reachable when isolated")
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--silent-after",
        dest="silent_after",
        type=float,
        help="seconds without a message (and no goodbye) before host_silent (60)",
    )
    p.add_argument(
        "--max-windows-per-s",
        dest="max_windows_per_s",
        type=float,
        help="per-agent messages per second (200; bursts of 100x)",
    )
    p.add_argument(
        "--max-bytes-per-s",
        dest="max_bytes_per_s",
        type=float,
        help="per-agent bytes per second (4 MiB; bursts of 16x)",
    )
    p.add_argument("--log-format", dest="log_format", help="text (default) or json")
    p.add_argument(
        "--webhook-secret",
        dest="webhook_secret",
        help="whsec_<base64> key signing the --webhook URLs (Standard Webhooks)",
    )
    p.add_argument(
        "--webhook-format",
        dest="webhook_format",
        help="format of the --webhook URLs: generic, slack, mattermost, teams, alertmanager",
    )
    p.add_argument(
        "--fleet-guard",
        dest="fleet_guard",
        type=int,
        help="hold automatic isolation beyond N hosts per minute (3; 0: no guard)",
    )
    p.add_argument("--metrics", help="HOST:PORT for the Prometheus /metrics endpoint (off)")
    p.add_argument(
        "--max-clock-skew-s",
        dest="max_clock_skew_s",
        type=float,
        help="re-date windows whose end is further than this from the collector's clock (300)",
    )
    p.add_argument(
        "--baseline-learning-days",
        dest="baseline_learning_days",
        type=float,
        help="days of a host's own windows before it is scored with its own baseline (7)",
    )
    if role:
        p.add_argument("--bus", help="nats://HOST:PORT of the NATS JetStream the roles share")
        p.add_argument("--name", help="this process's name on the bus (default: host-pid)")
        p.add_argument(
            "--bus-replicas",
            dest="bus_replicas",
            type=int,
            help="JetStream replicas of tocsin's streams (1; 3 on a 3-node cluster)",
        )
    return p


def load_config(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
    for key, value in data.items():
        want = _KEYS.get(key.replace("-", "_"))
        if want is None:
            raise ConfigError(f"--config {path}: unknown key {key!r}")
        if key in ("webhook", "allow") and isinstance(value, str):
            value = [value]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            name = getattr(want, "__name__", "number")
            raise ConfigError(f"--config {path}: {key} must be a {name}")
        data[key] = value
    return {k.replace("-", "_"): v for k, v in data.items()}


def settings(argv: Sequence[str]) -> dict[str, Any]:
    """Flags over config over defaults, validated; ``ConfigError`` on the first problem."""
    role = argv[0] if argv and argv[0] in ROLES else ""
    args = vars(build_parser(role).parse_args(argv[1:] if role else argv))
    conf = load_config(args["config"]) if args["config"] else {}
    merged: dict[str, Any] = {
        "respond": "dry-run",
        "webhook": [],
        "allow": [],
        "insecure": False,
        "log_level": "INFO",
        "log_format": "text",
        "webhooks": [],
        "hooks": [],
        "fleet_guard": 3,
        "webhook_format": "generic",
        "webhook_retry_initial_s": 1.0,
        "webhook_retry_max_s": 300.0,
        "webhook_max_age_s": 86400.0,
        "max_clock_skew_s": 300.0,
        "retention_days": 30.0,
        "rollup_days": 365.0,
        "disk_warn_percent": 80.0,
        "language": "en",
        "baseline_learning_days": 7.0,
        "behind_windows": 2000,
        "behind_lag_ms": 100.0,
        "pushback_s": 5.0,
        "bus_replicas": 1,
        "name": f"{role or 'collector'}-{socket.gethostname()}-{os.getpid()}",
    }
    merged.update(conf)
    merged.update({k: v for k, v in args.items() if v is not None and k != "config"})
    for key, value in merged.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{key.replace('_', '-')} wants a finite number, not {value}")
    merged["role"] = role or "collector"
    if role != "worker":
        if not merged.get("listen"):
            raise ConfigError("--listen HOST:PORT is required")
        parse_hostport(merged["listen"])
    merged["store"] = store_location(args, conf)
    merged.pop("db", None)
    if role:
        _check_scale(merged)
    if merged["respond"] not in MODES:
        raise ConfigError(f"--respond must be one of {', '.join(MODES)}, not {merged['respond']!r}")
    for url in merged["webhook"]:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"--webhook wants an http:// or https:// URL, got {redact_url(url)}")
    for cidr in merged["allow"]:
        try:
            ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            raise ConfigError(f"--allow wants a CIDR, got {cidr!r}") from None
    level = str(merged["log_level"]).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level wants DEBUG, INFO, WARNING or ERROR, got {level!r}")
    merged["log_level"] = level
    if merged["log_format"] not in ("text", "json"):
        raise ConfigError(f"--log-format wants text or json, got {merged['log_format']!r}")
    if merged["fleet_guard"] < 0:
        raise ConfigError("--fleet-guard wants a number of hosts per minute >= 0")
    if merged.get("metrics"):
        parse_hostport(merged["metrics"])
    for key in (
        "webhook_retry_initial_s",
        "webhook_retry_max_s",
        "webhook_max_age_s",
        "max_clock_skew_s",
        "baseline_learning_days",
    ):
        merged[key] = float(merged[key])
        if merged[key] <= 0:
            raise ConfigError(f"{key} must be > 0")
    for key, lowest, highest in (
        ("retention_days", 1.0, 36500.0),
        ("rollup_days", 1.0, 36500.0),
        ("disk_warn_percent", 1.0, 100.0),
        ("behind_windows", 10.0, 1_000_000.0),
        ("behind_lag_ms", 10.0, 10_000.0),
        ("pushback_s", 0.5, 60.0),
    ):
        merged[key] = float(merged[key])
        if not lowest <= merged[key] <= highest:  # also refuses nan
            raise ConfigError(f"{key} must be between {lowest:g} and {highest:g}")
    merged["destinations"] = destinations(merged)
    merged["hook_list"] = [
        _hook(h, f"[[hooks]] #{i + 1}") for i, h in enumerate(_tables(merged["hooks"], "hooks"))
    ]
    for key, lowest in (
        ("silent_after", 0.5),
        ("max_windows_per_s", 1.0),
        ("max_bytes_per_s", 1024.0),
    ):
        if key in merged and float(merged[key]) < lowest:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= {lowest:g}")
    tls = TlsFiles(
        *(Path(merged[k]) if merged.get(k) else None for k in ("tls_ca", "tls_cert", "tls_key"))
    )
    require_tls_or_insecure(tls, bool(merged["insecure"]))
    merged["tls"] = tls
    if merged["language"] not in ("en", "fr"):
        raise ConfigError(f"language must be en or fr, not {merged['language']!r}")
    if merged.get("console"):
        console_host, _ = parse_hostport(merged["console"], "console")
        if not tls.given() and not is_loopback(console_host):
            raise ConfigError(
                "console: without TLS the console listens on loopback only (127.0.0.1, ::1)"
            )
    return merged


def store_location(args: dict[str, Any], conf: dict[str, Any]) -> str:
    """``--store`` (or ``--db``) from the flags, else from the config; a file is checked."""
    from tocsin.collector.db import is_postgresql

    given = {k: args[k] for k in ("store", "db") if args.get(k)}
    given = given or {k: conf[k] for k in ("store", "db") if conf.get(k)}
    if len(given) > 1:
        raise ConfigError("give --store or --db, not both")
    if not given:
        raise ConfigError("--store PATH (or a postgresql:// URL) is required")
    (flag, where), *_ = given.items()
    if is_postgresql(str(where)):
        return str(where)  # reached (and refused in one line) when the collector opens it
    db = Path(where)
    if not db.parent.is_dir():
        raise ConfigError(f"--{flag} {db}: directory {db.parent} does not exist")
    if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise ConfigError(f"--{flag} {db}: not writable")
    return str(db)


def _check_scale(merged: dict[str, Any]) -> None:
    """What a gateway and a worker need beyond the embedded collector's settings."""
    from tocsin.collector.db import is_postgresql

    bus = merged.get("bus") or ""
    if not bus.startswith(("nats://", "tls://")):
        raise ConfigError("--bus wants nats://HOST:PORT (or tls://HOST:PORT) of NATS JetStream")
    if not is_postgresql(merged["store"]):
        raise ConfigError(
            f"{merged['role']}s share one store: --store wants postgresql://..., not a file"
        )
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", merged["name"]):
        merged["name"] = re.sub(r"[^A-Za-z0-9_-]", "-", merged["name"])[:64]
    if not 1 <= merged["bus_replicas"] <= 5:
        raise ConfigError("--bus-replicas must be between 1 and 5")


def _tables(items: list[Any], what: str) -> list[dict[str, Any]]:
    if not all(isinstance(t, dict) for t in items):
        raise ConfigError(f"{what} must be [[{what}]] tables")
    return items


def _hook(spec: dict[str, Any], where: str) -> Any:
    from tocsin.collector.hooks import hook

    return hook(spec, where)


def destinations(merged: dict[str, Any]) -> list[Any]:
    """Every webhook destination: --webhook URLs (one format and secret) and [[webhooks]]."""
    from tocsin.collector.outbox import destination

    if merged.get("webhook_secret"):
        try:
            parse_secret(str(merged["webhook_secret"]))
        except ConfigError as exc:
            raise ConfigError(f"webhook_secret: {exc}") from None
    out = []
    for url in merged["webhook"]:
        spec = {"url": url, "format": merged["webhook_format"]}
        if merged.get("webhook_secret"):
            spec["secret"] = merged["webhook_secret"]
        out.append(destination(spec, "--webhook"))
    for i, spec in enumerate(_tables(merged["webhooks"], "webhooks")):
        out.append(destination(spec, f"[[webhooks]] #{i + 1}"))
    seen = [d.dest_id for d in out]
    dup = next((d for d in out if seen.count(d.dest_id) > 1), None)
    if dup:
        raise ConfigError(f"webhook {dup.label} is configured twice; give one a name")
    labels = [d.label for d in out]
    return [
        replace(d, shown=f"{d.label} #{i + 1}") if labels.count(d.label) > 1 else d
        for i, d in enumerate(out)
    ]


async def serve(conf: dict[str, Any]) -> None:
    from tocsin.collector import sdnotify
    from tocsin.collector.app import build, build_gateway, build_worker

    role = conf["role"]
    if role == "gateway":
        app: Any = await build_gateway(conf)
    elif role == "worker":
        app = await build_worker(conf)
    else:
        app = build(conf)
    port = await app.start(conf.get("listen"))
    settle_garbage_collection()
    if role == "worker":
        status = f"worker {conf['name']} judging from {conf['bus']}"
        log.info("%s (respond=%s)", status, conf["respond"])
    else:
        host, _ = parse_hostport(conf["listen"])
        status = f"listening on {host}:{port}"
        model = conf.get("model") or "shipped baseline"
        via = f", bus={conf['bus']}" if role == "gateway" else f", model={model}"
        log.info("%s (respond=%s%s)", status, conf["respond"], via)
    if conf["insecure"]:
        log.warning(
            "WARNING: --insecure: nothing is encrypted or authenticated. Agents may stream"
            " from anywhere and claim any host id no live stream holds; the operator API"
            " answers callers on loopback only (remote control needs TLS and an operator"
            " certificate)"
        )
    if not conf["destinations"] and role != "gateway":
        log.warning("no --webhook: alerts are stored but nobody is told")
    watchdog = sdnotify.start_watchdog()
    sdnotify.notify(f"READY=1\nSTATUS={status}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    sdnotify.notify("STOPPING=1")
    if watchdog is not None:
        watchdog.cancel()
    await app.stop(grace_s=5.0)


def settle_garbage_collection() -> None:
    """Tune the garbage collector for a long-lived server with a large heap.

    Everything built at start (modules, the model, the assembly) is moved out of
    the collector's reach (``gc.freeze``), and collections are made rarer: with
    2,000 agents connected the default thresholds ran a full collection every
    second or two, each stopping the event loop longer than the admission's lag
    limit, which it read as overload and answered by pausing agents. Memory is
    freed by reference counts as before; only cycles wait longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        conf = settings(argv)
        logging.basicConfig(level=conf["log_level"], stream=sys.stderr)
        from tocsin.v1.jsonlog import use_json_logs, use_text_logs

        (use_json_logs if conf["log_format"] == "json" else use_text_logs)(PROG)
        asyncio.run(serve(conf))
    except TocsinError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
