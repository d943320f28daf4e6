"""Addresses and TLS material for the collector's server and its clients.

Every function raises ``ConfigError`` with one line naming the problem.
Without TLS material a server or client is built only when ``insecure`` is
set explicitly: plaintext is an operator's decision, never a fallback.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

from tocsin.v1 import CHANNEL_OPTIONS
from tocsin.v1.errors import ConfigError

# The server side of the keepalive contract. Agents ping every 10 s (keepalive_time_ms in
# CHANNEL_OPTIONS), even on an idle stream; a server keeps its default minimum of 5 minutes
# between pings without data and answers faster pings with GOAWAY "too_many_pings". Accept
# pings every 5 s, and ping agents ourselves so a dead peer's stream ends within ~15 s.
SERVER_OPTIONS: list[tuple[str, int]] = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 5),
]


def parse_hostport(value: str, what: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); port 0..65535."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit() or int(port_s) > 65535:
        raise ConfigError(f"{what} wants HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port_s)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


@dataclass(frozen=True)
class TlsFiles:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def given(self) -> bool:
        return any((self.ca, self.cert, self.key))

    def read(self) -> tuple[bytes, bytes, bytes]:
        if not (self.ca and self.cert and self.key):
            raise ConfigError("TLS needs all of --tls-ca, --tls-cert and --tls-key")
        out = []
        for flag, path in (
            ("--tls-ca", self.ca),
            ("--tls-cert", self.cert),
            ("--tls-key", self.key),
        ):
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None
        return out[0], out[1], out[2]


def require_tls_or_insecure(tls: TlsFiles, insecure: bool) -> None:
    if insecure and tls.given():
        raise ConfigError("--insecure and TLS material (--tls-*) exclude each other")
    if not insecure and not tls.given():
        raise ConfigError(
            "no TLS material (--tls-ca, --tls-cert, --tls-key); pass --insecure to run without TLS"
        )
    if tls.given():
        tls.read()


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """mTLS: the server presents cert/key and requires a client certificate signed by ca."""
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def client_channel(target: str, tls: TlsFiles, insecure: bool) -> grpc.aio.Channel:
    parse_hostport(target, "--collector")
    require_tls_or_insecure(tls, insecure)
    if insecure:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    ca, cert, key = tls.read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return grpc.aio.secure_channel(target, creds, options=CHANNEL_OPTIONS)
