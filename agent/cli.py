"""``tocsin-agent``: run the agent (default) or ``tocsin-agent drill``.

Contract: every user mistake (bad flag, bad config, missing directory, no TLS
material without --insecure) prints exactly one line
``tocsin-agent: error: ...`` on stderr and exits 2, never a traceback.
SIGTERM/SIGINT stop the agent cleanly (Goodbye, flush) with status 0.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import math
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any, NoReturn

from tocsin.agent.tripwire import MODES
from tocsin.v1.errors import ConfigError, TocsinError

PROG = "tocsin-agent"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message.replace("\n", " "))


def _agent_parser() -> _Parser:
    p = _Parser(prog=PROG, description="tocsin agent: watch file trees, stream windows")
    p.add_argument(
        "--collector",
        action="append",
        help="collector HOST:PORT; several (repeated or a,b) are tried in turn",
    )
    p.add_argument("--watch", action="append", help="directory to watch (repeatable)")
    p.add_argument("--host-id")
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--config", type=Path, help="TOML file with the same keys")
    p.add_argument(
        "--insecure", action="store_true", default=None, help="plaintext gRPC (tests, labs)"
    )
    p.add_argument("--tls-ca", type=Path)
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--record", type=Path, help="append every sent message to this JSONL file")
    p.add_argument(
        "--tripwire",
        choices=MODES,
        help="the agent's own suspend: follow (the collector's response mode; default), "
        "off, dry-run or enforce",
    )
    p.add_argument("--window-s", type=float)
    p.add_argument("--allow", action="append", help="CIDR kept reachable when isolated")
    p.add_argument(
        "--resolver",
        action="append",
        dest="resolvers",
        help="DNS server kept reachable when isolated (default: /etc/resolv.conf's)",
    )
    p.add_argument("--canary", action="append", help="canary file path (created if missing)")
    p.add_argument(
        "--canaries",
        action="store_true",
        default=None,
        help="plant the default decoy documents in every watched root",
    )
    p.add_argument(
        "--protect",
        action="append",
        help="pid, or root's executable (path or file name; never a process name) "
        "the tripwire never suspends",
    )
    p.add_argument(
        "--spool-max-windows",
        type=int,
        help="windows kept for the collector at most (100000; oldest dropped)",
    )
    p.add_argument("--spool-max-mb", type=float, help="spool size limit in MiB (256)")
    p.add_argument("--metrics", help="HOST:PORT for the Prometheus /metrics endpoint (off)")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=None,
        help="text (default) or json: one JSON object per line",
    )
    p.add_argument(
        "--smb-conf", help="Samba's smb.conf, to name the SMB user of a worker (Samba's default)"
    )
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    return p


KEYS = {
    "collector": (str, list),
    "watch": list,
    "host_id": str,
    "state_dir": str,
    "insecure": bool,
    "tripwire": str,
    "window_s": (int, float),
    "allow": list,
    "resolvers": list,
    "record": str,
    "tls_ca": str,
    "tls_cert": str,
    "tls_key": str,
    "log_level": str,
    "canary": list,
    "metrics": str,
    "log_format": str,
    "spool_max_windows": int,
    "spool_max_mb": (int, float),
    "canaries": bool,
    "protect": list,
    "smb_conf": str,
}


def _load_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    for k, v in data.items():
        if k not in KEYS:
            raise ConfigError(f"config {path}: unknown key {k!r}")
        if not isinstance(v, KEYS[k]):  # type: ignore[arg-type]
            raise ConfigError(f"config {path}: key {k!r} has the wrong type")
    return data


def _finite(name: str, value: float) -> float:
    """``value`` as a float; ConfigError for nan or infinity (TOML and argparse accept both)."""
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"--{name} must be a finite number, not {value}")
    return v


def _collectors(given: str | list[Any]) -> list[str]:
    """HOST:PORT of each collector: a list (repeated flag, config list) of a,b,... strings."""
    items = [given] if isinstance(given, str) else given
    found: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"--collector must be HOST:PORT, not {item!r}")
        for one in (part.strip() for part in item.split(",")):
            host, _, port = one.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"--collector must be HOST:PORT, not {one!r}")
            if one not in found:
                found.append(one)
    return found


def build_config(argv: list[str]) -> tuple[Any, str]:
    """Parse flags + config into an AgentConfig; raises ConfigError on any mistake."""
    from tocsin.agent.runtime import AgentConfig

    args = _agent_parser().parse_args(argv)
    conf: dict[str, Any] = _load_config(args.config) if args.config else {}
    merged = {k: conf.get(k) for k in KEYS}
    for k in KEYS:
        v = getattr(args, k, None)
        if v is not None:
            merged[k] = v
    for k in ("collector", "watch", "host_id", "state_dir"):
        if not merged.get(k):
            raise ConfigError(f"--{k.replace('_', '-')} is required")
    collectors = _collectors(merged["collector"])
    for d in merged["watch"]:
        if not os.path.isdir(d):
            raise ConfigError(f"--watch {d}: not a directory")
    tls = [merged.get("tls_ca"), merged.get("tls_cert"), merged.get("tls_key")]
    if not merged.get("insecure"):
        if not all(tls):
            raise ConfigError(
                "no TLS material (--tls-ca, --tls-cert, --tls-key); "
                "pass --insecure to run without TLS"
            )
        for t in tls:
            if not os.path.isfile(str(t)):
                raise ConfigError(f"TLS file {t}: not found")
    mode = merged.get("tripwire") or "follow"
    if mode not in MODES:
        raise ConfigError(f"tripwire must be one of {', '.join(MODES)}, not {mode!r}")
    window_s = _finite("window-s", merged.get("window_s") or 1.0)
    if not 0.05 <= window_s <= 60:
        raise ConfigError(f"--window-s must be between 0.05 and 60, not {window_s}")
    import ipaddress

    for cidr in merged.get("allow") or []:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"--allow {cidr!r}: not a CIDR") from None
    for addr in merged.get("resolvers") or []:
        try:
            ipaddress.ip_address(str(addr))
        except ValueError:
            raise ConfigError(f"--resolver {addr!r}: not an IP address") from None
    spool_windows = int(merged.get("spool_max_windows") or 100_000)
    spool_mb = _finite("spool-max-mb", merged.get("spool_max_mb") or 256)
    if spool_windows < 10 or not 1 <= spool_mb <= 1024 * 1024:
        raise ConfigError(
            "--spool-max-windows must be >= 10 and --spool-max-mb between 1 and 1048576"
        )
    metrics = str(merged.get("metrics") or "")
    if metrics:
        m_host, _, m_port = metrics.rpartition(":")
        if not m_host or not m_port.isdigit() or not 0 <= int(m_port) < 65536:
            raise ConfigError(f"--metrics must be HOST:PORT, not {metrics!r}")
    log_format = str(merged.get("log_format") or "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format must be text or json, not {log_format!r}")
    smb_conf = str(merged.get("smb_conf") or "")
    if smb_conf and not os.path.isfile(smb_conf):
        raise ConfigError(f"--smb-conf {smb_conf}: not a file")
    state_dir = Path(merged["state_dir"])
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--state-dir {state_dir}: {exc.strerror}") from None
    cfg = AgentConfig(
        collectors=collectors,
        watch=[str(w) for w in merged["watch"]],
        host_id=str(merged["host_id"]),
        state_dir=state_dir,
        insecure=bool(merged.get("insecure")),
        tls_ca=Path(tls[0]) if tls[0] else None,
        tls_cert=Path(tls[1]) if tls[1] else None,
        tls_key=Path(tls[2]) if tls[2] else None,
        record=Path(merged["record"]) if merged.get("record") else None,
        tripwire=mode,
        window_s=window_s,
        allow=list(merged.get("allow") or []),
        resolvers=[str(r) for r in merged.get("resolvers") or []],
        canaries=list(merged.get("canary") or []),
        plant_canaries=bool(merged.get("canaries")),
        protect=[str(x) for x in merged.get("protect") or []],
        spool_max_windows=spool_windows,
        spool_max_bytes=int(spool_mb * 1024 * 1024),
        metrics=metrics,
        log_format=log_format,
        smb_conf=smb_conf,
    )
    return cfg, str(merged.get("log_level") or "info")


def _run_agent(argv: list[str]) -> int:
    cfg, level = build_config(argv)
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if cfg.log_format == "json":
        from tocsin.v1.jsonlog import use_json_logs

        use_json_logs(PROG)
    from tocsin.v1.text import escape_log_text

    escape_log_text()  # file names and process names are attacker text
    from tocsin.agent.limits import cap_malloc_arenas
    from tocsin.agent.runtime import Agent

    cap_malloc_arenas()
    agent = Agent(cfg)
    # `kill -USR2 <pid>`: every thread's Python stack to stderr (the journal), to see
    # where a stuck agent waits without stopping it; the same on a fatal signal (SIGSEGV,
    # SIGABRT...) before the process dies, so a crash in native code leaves a trace.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    faulthandler.enable(all_threads=True)
    signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
    signal.signal(signal.SIGINT, lambda *_: agent.request_stop())
    return agent.run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "drill":
            from tocsin.agent.drill import main as drill_main

            return drill_main(argv[1:])
        return _run_agent(argv)
    except TocsinError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":
    raise SystemExit(main())
