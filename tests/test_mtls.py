"""Mutual TLS with certificates from ``tocsin certs``, a real collector process, real agents."""

from __future__ import annotations

import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from transport_procs import BIN, CollectorProc, free_port, stored, wait_for

from tocsin.agent.ship import HelloInfo, Shipper
from tocsin.agent.spool import WindowSpool
from tocsin.v1 import telemetry_pb2 as pb


def certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tocsin"), "certs", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    town, other = root / "town", root / "other"
    for d in (town, other):
        assert certs("init", "--dir", str(d)).returncode == 0
    assert (
        certs(
            "issue", "collector", "--dir", str(town), "--collector", "--san", "127.0.0.1"
        ).returncode
        == 0
    )
    for name in ("mairie-fs1", "mairie-fs2"):
        assert certs("issue", name, "--dir", str(town)).returncode == 0
    assert certs("issue", "mairie-fs1", "--dir", str(other)).returncode == 0
    return {"town": town, "other": other}


@pytest.fixture(scope="module")
def collector(
    pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorProc]:
    tmp = tmp_path_factory.mktemp("col")
    town = pki["town"]
    col = CollectorProc(
        tmp / "c.db",
        tmp / "c.log",
        f"127.0.0.1:{free_port()}",
        [
            "--tls-ca",
            str(town / "ca.pem"),
            "--tls-cert",
            str(town / "collector.pem"),
            "--tls-key",
            str(town / "collector.key"),
        ],
    )
    col.start()
    yield col
    col.stop()


def test_certs_files_and_permissions(pki: dict[str, Path]) -> None:
    town = pki["town"]
    assert stat.S_IMODE(town.stat().st_mode) == 0o700
    for key in ("ca.key", "collector.key", "mairie-fs1.key"):
        assert stat.S_IMODE((town / key).stat().st_mode) == 0o600, key
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((town / "mairie-fs1.pem").read_bytes())
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert cn == "mairie-fs1" and san.get_values_for_type(x509.DNSName) == ["mairie-fs1"]
    again = certs("issue", "mairie-fs1", "--dir", str(town))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert certs("init", "--dir", str(town)).returncode == 2
    bad = certs("issue", "bad/name", "--dir", str(town))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def ship(
    col: CollectorProc,
    tmp: Path,
    ca: Path,
    cert_dir: Path,
    cert: str,
    host_id: str,
    boot: str,
    n: int = 3,
    wait_s: float = 8.0,
) -> Shipper:
    creds = grpc.ssl_channel_credentials(
        ca.read_bytes(),
        (cert_dir / f"{cert}.key").read_bytes(),
        (cert_dir / f"{cert}.pem").read_bytes(),
    )
    spool = WindowSpool(tmp / f"{boot}.sqlite")
    s = Shipper(
        col.listen,
        spool,
        HelloInfo(host_id, boot, ["/srv"]),
        lambda c: pb.ActionResult(command_id=c.id),
        credentials=creds,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )
    s.start()
    for _ in range(n):
        s.submit_window(pb.Window(files_modified=1))
    end = time.monotonic() + wait_s
    while time.monotonic() < end and spool.depth and s.last_status is None:
        time.sleep(0.05)
    return s


def test_valid_agent_is_accepted(
    collector: CollectorProc, pki: dict[str, Path], tmp_path: Path
) -> None:
    town = pki["town"]
    s = ship(collector, tmp_path, town / "ca.pem", town, "mairie-fs1", "mairie-fs1", "good-1")
    try:
        wait_for("acks", lambda: s.spool.depth == 0, 10)
        assert stored(collector.db)[("mairie-fs1", "good-1")] == [1, 2, 3]
    finally:
        s.stop()


def test_certificate_of_another_ca_is_refused(
    collector: CollectorProc, pki: dict[str, Path], tmp_path: Path
) -> None:
    # The agent trusts the town's collector, but its own certificate comes from elsewhere.
    s = ship(
        collector,
        tmp_path,
        pki["town"] / "ca.pem",
        pki["other"],
        "mairie-fs1",
        "mairie-fs1",
        "evil-1",
        wait_s=3,
    )
    try:
        assert s.spool.depth == 3 and s.connections == 0
        assert ("mairie-fs1", "evil-1") not in stored(collector.db)
    finally:
        s.stop()


def test_valid_certificate_claiming_another_host_is_refused(
    collector: CollectorProc, pki: dict[str, Path], tmp_path: Path
) -> None:
    town = pki["town"]
    s = ship(collector, tmp_path, town / "ca.pem", town, "mairie-fs2", "mairie-fs1", "spoof-1")
    try:
        wait_for("a refusal", lambda: s.last_status is not None, 10)
        assert s.last_status == grpc.StatusCode.PERMISSION_DENIED
        assert s.spool.depth == 3 and ("mairie-fs1", "spoof-1") not in stored(collector.db)
        assert "does not match certificate name 'mairie-fs2'" in collector.text()
    finally:
        s.stop()


def test_real_agent_over_mtls(
    collector: CollectorProc, pki: dict[str, Path], tmp_path: Path
) -> None:
    town = pki["town"]
    (tmp_path / "share").mkdir()
    log = tmp_path / "agent.log"
    proc = subprocess.Popen(
        [
            str(BIN / "tocsin-agent"),
            "--collector",
            collector.listen,
            "--watch",
            str(tmp_path / "share"),
            "--host-id",
            "mairie-fs2",
            "--state-dir",
            str(tmp_path / "st"),
            "--tls-ca",
            str(town / "ca.pem"),
            "--tls-cert",
            str(town / "mairie-fs2.pem"),
            "--tls-key",
            str(town / "mairie-fs2.key"),
            "--window-s",
            "0.2",
            "--tripwire",
            "off",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        for i in range(10):
            (tmp_path / "share" / f"f{i}.txt").write_text("x" * i)
            time.sleep(0.05)
        wait_for(
            "the agent's windows",
            lambda: any(h == "mairie-fs2" for h, _ in stored(collector.db)),
            20,
        )
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, log.read_text()
    assert "WARNING" not in log.read_text()


def test_no_tls_and_no_insecure_refuses_to_start(tmp_path: Path) -> None:
    col = subprocess.run(
        [str(BIN / "tocsin-collector"), "--listen", "127.0.0.1:0", "--db", str(tmp_path / "c.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    agent = subprocess.run(
        [
            str(BIN / "tocsin-agent"),
            "--collector",
            "127.0.0.1:1",
            "--watch",
            str(tmp_path),
            "--host-id",
            "h",
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for res, prog in ((col, "tocsin-collector"), (agent, "tocsin-agent")):
        assert res.returncode == 2
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith(f"{prog}: error: no TLS material") and "--insecure" in line


def test_insecure_is_a_logged_choice(tmp_path: Path) -> None:
    col = CollectorProc(tmp_path / "c.db", tmp_path / "c.log", "127.0.0.1:0", ["--insecure"])
    col.start()
    try:
        assert "WARNING: --insecure" in col.text()
    finally:
        assert col.stop() == 0


def test_operator_service_accepts_only_operator_certificates(
    collector: CollectorProc, pki: dict[str, Path], tmp_path: Path
) -> None:
    """An agent's certificate (which an attacker on a file server holds) cannot release."""
    town = pki["town"]
    assert certs("issue", "alice", "--dir", str(town), "--operator").returncode == 0

    def hosts_as(cert: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(BIN / "tocsin"),
                "hosts",
                "--collector",
                collector.listen,
                "--tls-ca",
                str(town / "ca.pem"),
                "--tls-cert",
                str(town / f"{cert}.pem"),
                "--tls-key",
                str(town / f"{cert}.key"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    for cert in ("alice", "collector"):
        ok = hosts_as(cert)
        assert ok.returncode == 0, (cert, ok.stderr)
    refused = hosts_as("mairie-fs2")
    assert refused.returncode != 0
    assert "not an operator" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
