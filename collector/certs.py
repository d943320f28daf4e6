"""``tocsin certs``: a small certificate authority for one town.

    tocsin certs init  --dir D [--name "Mairie de X"] [--days 3650]
    tocsin certs issue NAME --dir D [--collector | --operator] [--san HOST_OR_IP ...] [--days 825]

Contract:

- ``init`` creates ``D`` (mode 0700), ``D/ca.key`` (EC P-256, mode 0600) and
  ``D/ca.pem`` (a self-signed CA limited to issuing leaf certificates). It
  never overwrites an existing CA.
- ``issue NAME`` writes ``D/NAME.key`` (0600) and ``D/NAME.pem`` signed by the
  CA. An agent certificate (the default) has CN = SAN = NAME, which must be the
  agent's ``--host-id`` (the collector takes the agent's identity from it), and
  is good for client authentication only. ``--collector`` makes a server
  certificate (also good as a client, for the operator's ``tocsin`` command):
  its SANs are NAME plus every ``--san`` (a DNS name or an IP address): the
  address agents dial must be among them. ``--operator`` makes a client
  certificate for a person running ``tocsin`` (NAME is recorded in the audit).
  Collector and operator certificates carry the organisational unit
  ``OPERATOR_OU``; the collector's Operator service (hosts, alerts, isolate,
  release) accepts only those, so an agent's certificate, which an attacker on
  a file server may hold, can never release its own host. Existing files are
  never overwritten.
- Every mistake is a ``ConfigError`` (one line, exit status 2).

Keys never leave the machine that runs the command; copy NAME.key and
NAME.pem to the host with ``ca.pem`` (never ``ca.key``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from tocsin.v1.errors import ConfigError, TocsinError

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Organisational unit of certificates allowed to call the Operator service.
OPERATOR_OU = "tocsin-operator"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    _HAVE_CRYPTOGRAPHY = True
except ImportError:  # the agent's install: no certificates made there
    _HAVE_CRYPTOGRAPHY = False


def _need_crypto() -> None:
    if not _HAVE_CRYPTOGRAPHY:
        raise ConfigError(
            "tocsin certs needs the 'cryptography' package (pip install 'tocsin[collector]')"
        )


def _write_private(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def _ensure_dir(d: Path) -> None:
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    except OSError as exc:
        raise ConfigError(f"--dir {d}: {exc.strerror or exc}") from None


def init_ca(d: Path, name: str = "tocsin town CA", days: int = 3650) -> Path:
    """Create the CA in ``d``; returns the path of ca.pem."""
    _need_crypto()
    _ensure_dir(d)
    if (d / "ca.key").exists() or (d / "ca.pem").exists():
        raise ConfigError(f"{d} already holds a CA; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tocsin"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        d / "ca.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write_private(d / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return d / "ca.pem"


def issue(
    d: Path,
    name: str,
    collector: bool = False,
    sans: Sequence[str] = (),
    days: int = 825,
    operator: bool = False,
) -> tuple[Path, Path]:
    """Issue NAME's certificate with the CA in ``d``; returns (cert path, key path)."""
    _need_crypto()
    EKU = ExtendedKeyUsageOID
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"name {name!r}: want [A-Za-z0-9._-]{{1,64}} (the agent's host id)")
    try:
        ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError("ca.key is not an EC key made by tocsin certs init")
        ca_cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    except OSError:
        raise ConfigError(f"no CA in {d}; run 'tocsin certs init --dir {d}' first") from None
    except ValueError as exc:
        raise ConfigError(f"CA in {d} is unreadable: {exc}") from None
    alt: list[x509.GeneralName] = [x509.DNSName(name)]
    for san in sans:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9.*-]{1,253}", san):
                raise ConfigError(f"--san {san!r}: not a DNS name or IP address") from None
            alt.append(x509.DNSName(san))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [EKU.SERVER_AUTH, EKU.CLIENT_AUTH] if collector else [EKU.CLIENT_AUTH]
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if collector or operator:
        subject.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, OPERATOR_OU))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = d / f"{name}.pem", d / f"{name}.key"
    if cert_path.exists():
        raise ConfigError(f"{cert_path} exists; refusing to overwrite it")
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def build_parser() -> _Parser:
    p = _Parser(prog="tocsin certs", description="a small CA for one town")
    sub = p.add_subparsers(dest="what", required=True, parser_class=_Parser)
    i = sub.add_parser("init", help="create the town's CA")
    i.add_argument("--dir", required=True, type=Path)
    i.add_argument("--name", default="tocsin town CA", help="the CA's common name")
    i.add_argument("--days", type=int, default=3650)
    s = sub.add_parser("issue", help="issue an agent (default) or collector certificate")
    s.add_argument("name", help="agent: its host id; collector: its DNS name")
    s.add_argument("--dir", required=True, type=Path)
    role = s.add_mutually_exclusive_group()
    role.add_argument("--collector", action="store_true", help="a server certificate")
    role.add_argument(
        "--operator",
        action="store_true",
        help="a certificate for a person running the tocsin command",
    )
    s.add_argument(
        "--san",
        action="append",
        default=[],
        help="extra DNS name or IP address (collector: what agents dial)",
    )
    s.add_argument("--days", type=int, default=825)
    return p


def main(argv: Sequence[str]) -> int:
    try:
        args = build_parser().parse_args(list(argv))
        if args.days < 1:
            raise ConfigError("--days must be >= 1")
        if args.what == "init":
            path = init_ca(args.dir, args.name, args.days)
            print(f"CA created: {path} (keep {args.dir / 'ca.key'} on this machine only)")
        else:
            cert, key = issue(
                args.dir, args.name, args.collector, args.san, args.days, operator=args.operator
            )
            kind = "collector" if args.collector else "operator" if args.operator else "agent"
            print(f"{kind} certificate: {cert}, key: {key}")
        return 0
    except TocsinError as exc:
        print(f"tocsin: error: {exc}", file=sys.stderr, flush=True)
        return int(exc.exit_status)
