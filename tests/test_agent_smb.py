"""Naming the client of an smbd worker: Samba's session data and the worker's socket."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from netns import netns_unavailable_reason, veth_pair
from tocsin.agent.attribute import Attributor, ProcInfo
from tocsin.agent.smb import SmbClient, SmbSessions, client_socket, session_users, worker_peer

# What `smbstatus -p --json` (Samba 4.17) prints for one session.
SMBSTATUS = {
    "timestamp": "2026-12-02T05:51:32.145062+0000",
    "version": "4.17.12-Debian",
    "smb_conf": "/tmp/x/smb.conf",
    "sessions": {
        "2341004954": {
            "session_id": "2341004954",
            "server_id": {"pid": "13290", "task_id": "0", "vnn": "4294967295"},
            "uid": 41234,
            "gid": 41234,
            "username": "compta",
            "groupname": "compta",
            "remote_machine": "10.1.2.3",
            "hostname": "ipv4:10.1.2.3:36534",
            "session_dialect": "SMB3_11",
        }
    },
}


def test_session_users_from_smbstatus_json() -> None:
    assert session_users(json.dumps(SMBSTATUS)) == {13290: "compta"}
    assert session_users("") == {}
    assert session_users("not json") == {}
    assert session_users('{"sessions": {"1": {"server_id": {}}}}') == {}


def test_a_process_that_is_not_an_smbd_worker_has_no_client() -> None:
    assert worker_peer(os.getpid()) is None
    assert SmbSessions(read_status=lambda conf: "").client_of(os.getpid()) is None
    assert worker_peer(2**22 + 12345) is None  # no such pid


def test_refresh_names_the_user_from_samba() -> None:
    seen: list[str] = []

    def read(conf: str) -> str:
        seen.append(conf)
        return json.dumps(SMBSTATUS)

    s = SmbSessions("/etc/samba/x.conf", read_status=read)
    s._clients[(13290, 1.0)] = SmbClient("10.1.2.3", 36534, "41234", "uid")
    s.refresh()
    assert s._clients[(13290, 1.0)] == SmbClient("10.1.2.3", 36534, "compta", "samba")
    assert seen == ["/etc/samba/x.conf"]


@pytest.mark.netns
@pytest.mark.skipif(netns_unavailable_reason() is not None, reason=str(netns_unavailable_reason()))
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a worker that changes its euid)")
def test_a_worker_read_while_it_acts_as_root_is_read_again_until_it_names_a_user() -> None:
    """An smbd worker acts as root between its client's requests: read then, it has no user
    yet; the next call reads its effective user again (an alert must name the account)."""
    import subprocess
    import time

    from tocsin.agent.smb import _stat

    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, time; time.sleep(0.5); os.seteuid(65534); time.sleep(60)",
        ]
    )
    try:
        stat = _stat(worker.pid)
        assert stat is not None
        s = SmbSessions(read_status=lambda conf: "")
        s._clients[(worker.pid, stat[1])] = SmbClient("10.1.2.3", 36534, "", "")  # read as root
        first = s.client_of(worker.pid)
        assert first is not None and first.user == ""
        time.sleep(1.0)
        later = s.client_of(worker.pid)
        assert later == SmbClient("10.1.2.3", 36534, "nobody", "uid"), later
    finally:
        worker.kill()
        worker.wait()


def test_client_socket_read_across_namespaces() -> None:
    """A server on port 445 in one namespace, its client in another: the agent, in
    neither, reads the client's address from the server process's own /proc."""
    server_code = (
        "import socket,sys,time\n"
        "s=socket.socket(socket.AF_INET6)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        "s.bind(('::',445)); s.listen(); print('up',flush=True)\n"
        "c,_=s.accept(); print('in',flush=True); time.sleep(30)\n"
    )
    with veth_pair("tsb") as (srv, cli):
        proc = srv.popen([sys.executable, "-c", server_code], stdout=-1)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
            client = cli.popen(
                [
                    sys.executable,
                    "-c",
                    f"import socket,time; s=socket.create_connection(({srv.address!r},445)); "
                    "time.sleep(30)",
                ]
            )
            assert proc.stdout.readline().strip() == b"in"
            peer = client_socket(proc.pid)
            assert peer is not None and peer[0] == cli.address, peer  # IPv4-mapped, unmapped
            assert worker_peer(proc.pid) is None  # python is not smbd
            client.kill()
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root")
def test_a_file_probed_destroyed_late_counts_for_its_stopped_writer(tmp_path: Path) -> None:
    """The attacker's last file is probed a window after it wrote it, while a colleague
    writes: the window's damage is the attacker's, sampled though it wrote nothing since."""
    info = {
        pid: ProcInfo(pid, 1, "smbd", "/usr/sbin/smbd", "u", f"smbd {pid}", 0.0)
        for pid in (4101, 4202)
    }
    a = Attributor([str(tmp_path)], use_fanotify=True, info=info.get)
    a.start()
    try:
        attacked = str(tmp_path / "a.docx")
        a._on_write(4101, attacked)
        assert {s.pid for s in a.collect([])} == {4101}
        a._on_write(4202, str(tmp_path / "courrier.txt"))
        samples = {s.pid: s for s in a.collect([attacked])}
        assert samples[4101].files_type_destroyed == 1 and samples[4101].files_touched == 0
        assert samples[4202].files_type_destroyed == 0
    finally:
        a.stop()
