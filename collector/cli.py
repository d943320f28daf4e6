"""``tocsin-collector``: run the collector.

    tocsin-collector --listen HOST:PORT --db PATH --webhook URL [--webhook URL ...]
                     --respond off|dry-run|enforce [--config FILE] [--insecure]
                     [--tls-ca F --tls-cert F --tls-key F] [--model PATH]
                     [--allow CIDR ...] [--log-level LEVEL]

The TOML config file takes the same keys (``listen``, ``db``, ``webhook`` as a
list, ``respond``, ``insecure``, ``tls_ca``, ``tls_cert``, ``tls_key``,
``model``, ``allow``, ``log_level``); flags override it. Every problem with
flags, config, database, model or address is one line on stderr
("tocsin-collector: error: ...") and exit status 2. Once bound, it logs
"listening on HOST:PORT (respond=MODE, model=...)" with the real port (useful
with port 0). SIGTERM or SIGINT stop it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tocsin.collector.grpcconf import (
    TlsFiles,
    parse_hostport,
    require_tls_or_insecure,
    server_credentials,
)
from tocsin.collector.respond import MODES
from tocsin.v1.errors import ConfigError, TocsinError

PROG = "tocsin-collector"
log = logging.getLogger("tocsin.collector")

_KEYS = {
    "listen": str, "db": str, "webhook": list, "respond": str, "insecure": bool,
    "tls_ca": str, "tls_cert": str, "tls_key": str, "model": str, "allow": list,
    "log_level": str, "silent_after": (int, float), "max_windows_per_s": (int, float),
    "max_bytes_per_s": (int, float),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises ``ConfigError`` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="tocsin collector: ingest, judge, respond.")
    p.add_argument("--listen", help="HOST:PORT to serve agents and operators on")
    p.add_argument("--db", help="SQLite database file")
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
    p.add_argument("--silent-after", dest="silent_after", type=float,
                   help="seconds without a message (and no goodbye) before host_silent (60)")
    p.add_argument("--max-windows-per-s", dest="max_windows_per_s", type=float,
                   help="per-agent messages per second (200; bursts of 100x)")
    p.add_argument("--max-bytes-per-s", dest="max_bytes_per_s", type=float,
                   help="per-agent bytes per second (4 MiB; bursts of 16x)")
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
        if not isinstance(value, want):
            name = getattr(want, "__name__", "number")
            raise ConfigError(f"--config {path}: {key} must be a {name}")
        data[key] = value
    return {k.replace("-", "_"): v for k, v in data.items()}


def settings(argv: Sequence[str]) -> dict[str, Any]:
    """Flags over config over defaults, validated; ``ConfigError`` on the first problem."""
    args = vars(build_parser().parse_args(argv))
    conf = load_config(args["config"]) if args["config"] else {}
    merged: dict[str, Any] = {
        "respond": "dry-run", "webhook": [], "allow": [], "insecure": False,
        "log_level": "INFO",
    }
    merged.update(conf)
    merged.update({k: v for k, v in args.items() if v is not None and k != "config"})
    if not merged.get("listen"):
        raise ConfigError("--listen HOST:PORT is required")
    parse_hostport(merged["listen"])
    if not merged.get("db"):
        raise ConfigError("--db PATH is required")
    db = Path(merged["db"])
    if not db.parent.is_dir():
        raise ConfigError(f"--db {db}: directory {db.parent} does not exist")
    if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise ConfigError(f"--db {db}: not writable")
    if merged["respond"] not in MODES:
        raise ConfigError(f"--respond must be one of {', '.join(MODES)}, not {merged['respond']!r}")
    for url in merged["webhook"]:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"--webhook wants an http:// or https:// URL, got {url!r}")
    for cidr in merged["allow"]:
        try:
            ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            raise ConfigError(f"--allow wants a CIDR, got {cidr!r}") from None
    level = str(merged["log_level"]).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level wants DEBUG, INFO, WARNING or ERROR, got {level!r}")
    merged["log_level"] = level
    for key, lowest in (("silent_after", 0.5), ("max_windows_per_s", 1.0),
                        ("max_bytes_per_s", 1024.0)):
        if key in merged and float(merged[key]) < lowest:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= {lowest:g}")
    tls = TlsFiles(*(Path(merged[k]) if merged.get(k) else None
                     for k in ("tls_ca", "tls_cert", "tls_key")))
    require_tls_or_insecure(tls, bool(merged["insecure"]))
    merged["tls"] = tls
    return merged


def load_scorer(model: str | None) -> Any:
    from tocsin.collector.score import ForestScorer

    try:
        return ForestScorer.load(Path(model) if model else None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model: {exc}") from None


async def serve(conf: dict[str, Any]) -> None:
    from tocsin.collector.server import Collector
    from tocsin.collector.store import SqliteStore
    from tocsin.collector.webhook import HttpWebhookSink

    scorer = load_scorer(conf.get("model"))
    store = SqliteStore(Path(conf["db"]))
    from tocsin.collector.ratelimit import RateLimits

    tls: TlsFiles = conf["tls"]
    per_s = float(conf.get("max_windows_per_s") or RateLimits.messages_per_s)
    bytes_s = float(conf.get("max_bytes_per_s") or RateLimits.bytes_per_s)
    collector = Collector(
        store, scorer, HttpWebhookSink(conf["webhook"]), mode=conf["respond"],
        allow=conf["allow"], credentials=server_credentials(tls) if tls.given() else None,
        silent_after_s=float(conf.get("silent_after") or 60.0),
        rate_limits=RateLimits(per_s, per_s * 100, bytes_s, bytes_s * 16),
    )
    port = await collector.start(conf["listen"])
    host, _ = parse_hostport(conf["listen"])
    model = conf.get("model") or "shipped baseline"
    log.info("listening on %s:%d (respond=%s, model=%s)", host, port, conf["respond"], model)
    if conf["insecure"]:
        log.warning("WARNING: --insecure: agents are neither encrypted nor authenticated;"
                    " any host can claim any host id")
    if not conf["webhook"]:
        log.warning("no --webhook: alerts are stored but nobody is told")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await collector.stop(grace_s=5.0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        conf = settings(argv)
        logging.basicConfig(
            level=conf["log_level"], stream=sys.stderr, format=f"{PROG}: %(message)s"
        )
        asyncio.run(serve(conf))
    except TocsinError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
