"""An infected workstation encrypts a Samba share: tocsin cuts that workstation, not the town.

Four test hosts (tests/sambaserver.py): the file server runs Debian's smbd (a
throw-away smb.conf, tdbsam users) and tocsin-agent; the collector host runs
tocsin-collector, a webhook receiver and an operator hook; the attacker's
workstation and a colleague's both speak SMB 3 through smbprotocol
(tools/smb_workstation.py), each from its own namespace. The attacker encrypts
the share at full speed in one of three styles while the colleague saves a
letter every half second. Every packet stays inside namespaces this test
created.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns import netns_unavailable_reason
from sambaserver import ATTACKER, STYLES, Town, samba_missing, smb_attack, smb_town

_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _why_not() -> str | None:
    reason = netns_unavailable_reason() or samba_missing()
    if reason and _CI:
        pytest.fail(f"the Samba end-to-end test must run in CI: {reason}", pytrace=False)
    return reason


pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())),
]

# The attacker is stopped in its first files and the alert comes within the second. The
# targets (0.3 s, 25 files) are measured by make eval's SMB section on a machine doing
# nothing else (docs/evaluation.md): a test on a shared, loaded machine asserts the order
# of magnitude only, and prints its figures (SMB-FIGURES).
MAX_SECONDS_TO_CRITICAL = 1.0
MAX_FILES_RUINED = 40
# The agent's own fast path stops the worker on blatant evidence (a town that wants the
# first files saved runs it so); the collector then blocks the client and alerts.
TRIPWIRE = "enforce"


@pytest.fixture
def town(tmp_path: Path) -> Iterator[Town]:
    with smb_town(tmp_path, share_files=600, tripwire=TRIPWIRE) as t:
        yield t


@pytest.mark.parametrize("style", STYLES)
def test_smb_attack_is_cut_at_the_client_and_the_colleague_keeps_working(
    town: Town, style: str
) -> None:
    r = smb_attack(town, style)
    body = r.alert["body"]
    proc = body["process"]
    addr = town.attacker.address
    logs = town.logs

    # The alert names the workstation and the account, in `process` and in words.
    assert proc is not None and proc["name"] == "smbd", body
    assert proc["smb_client_addr"] == addr, body
    assert proc["smb_user"] == ATTACKER.name, body
    assert addr in body["summary"] and ATTACKER.name in body["summary"], body["summary"]

    # The agent read Samba's own session data for that worker (a second after it first wrote).
    agent_log = (town.tmp / "agent.log").read_text()
    named = f"smbd worker {r.worker_pid} serves {addr} as SMB user {ATTACKER.name!r}"
    assert named in agent_log, logs()

    # The response cuts the attacker's session: its worker (a child of the smbd
    # master, which keeps running) and its address; the server is not isolated.
    actions = {a["action"]: a for a in body["actions"]}
    assert set(actions) == {"suspend", "block_client"}, body["actions"]
    assert actions["block_client"]["clients"] == [addr]
    assert r.worker_ppid == town.server.master_pid, "the worker is a child of the smbd master"
    assert r.worker_stopped and r.client_blocked, "the attacker was not cut\n" + logs()
    assert r.master_running, "the smbd master must never be stopped"
    assert r.ruined, "no file ruined before the alert?\n" + logs()
    # Encrypt-to-copy ruins a file once its original is deleted: a cut before the first
    # delete reached the server leaves it whole (seen). In place or renamed, the first
    # files the attacker wrote are changed on the server by the cut.
    if style != "copy":
        assert r.server_ruined_at_cut > 0, "the server holds every file as it was?"
    went_on = r.server_ruined_at_release - r.server_ruined_at_cut
    assert went_on == 0, (
        f"{went_on} files ruined on the server while the attacker was cut; its late lines: "
        f"{r.progress_late}"
    )
    assert not r.host_isolated and r.colleague_reachable

    # The colleague keeps saving through the response and after (one save every 0.5 s).
    assert r.saves and all(x[1] == "ok" for x in r.saves), r.saves
    assert r.saves_after_stop >= 5, f"{r.saves_after_stop} saves in the 3 s after the response"

    # The operator hook got the workstation, for the switch or the directory.
    assert f"TOCSIN_CLIENT_ADDR={addr}" in r.hook_out, r.hook_out
    assert f"TOCSIN_SMB_USER={ATTACKER.name}" in r.hook_out, r.hook_out
    assert f'"smb_client_addr": "{addr}"' in r.hook_out, r.hook_out

    # Release: the worker named and killed, the client unblocked, the master untouched.
    out = r.release.stdout
    assert r.release.returncode == 0, out + r.release.stderr + logs()
    assert f"pid {r.worker_pid}" in out and addr in out and "SIGKILL" in out, out
    assert r.client_unblocked and r.worker_gone and r.master_after_release
    assert len(r.saves_after_release) >= 2, r.saves_after_release
    assert all(x[1] == "ok" for x in r.saves_after_release), r.saves_after_release

    figures = r.figures()
    print("SMB-FIGURES " + json.dumps(figures))
    out_dir = Path(os.environ.get("TOCSIN_FIGURES_DIR", town.tmp))
    (out_dir / f"smb-figures-{style}.json").write_text(json.dumps(figures))
    assert r.seconds_to_critical <= MAX_SECONDS_TO_CRITICAL, figures
    assert len(r.ruined) <= MAX_FILES_RUINED, figures
