"""``tocsin-agent drill --dir DIR``: a harmless simulated attack that proves the chain.

Contract: builds a scratch share under DIR (refuses a non-empty DIR that is not
an earlier drill's), runs the simulated in-place encryptor as a child process
whose cmdline carries ``tocsin-drill``, and watches it. Exit 0 when the child
was stopped (SIGSTOP by tocsin) before it finished, 1 when it finished or the
timeout passed without being stopped (the chain is broken). Always kills the
child and removes the scratch share; never touches anything outside DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import psutil

from tocsin.agent import simulate
from tocsin.v1.errors import ConfigError

MARKER = ".tocsin-drill"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message.replace("\n", " "))


def _progress(path: Path) -> tuple[int, float]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0, 0.0
    first = float(lines[0].split(" ", 1)[0]) if lines else 0.0
    return len(lines), first


def main(argv: list[str]) -> int:
    p = _Parser(prog="tocsin-agent drill")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--rate", type=float, default=50.0, help="files ruined per second")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    root: Path = args.dir
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--dir {root}: not a directory")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).exists():
        raise ConfigError(f"--dir {root}: not empty and not an earlier drill directory")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("tocsin drill scratch directory\n")
    share = root / "share"
    progress = root / "progress.log"
    if share.exists():
        shutil.rmtree(share)
    progress.unlink(missing_ok=True)
    simulate.make_share(share, args.files)
    print(
        f"drill: scratch share of {args.files} files in {share}; encrypting at "
        f"{args.rate:g} files/s (a running tocsin agent must watch {root})",
        flush=True,
    )
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tocsin.agent.simulate",
            "run",
            "encrypt-inplace",
            str(share),
            "--rate",
            str(args.rate),
            "--progress",
            str(progress),
            "--tag",
            "tocsin-drill",
        ]
    )
    proc = psutil.Process(child.pid)
    deadline = time.monotonic() + args.timeout
    verdict = 1
    last = -1
    try:
        while time.monotonic() < deadline:
            n, first = _progress(progress)
            if n != last:
                print(f"drill: {n} files ruined", flush=True)
                last = n
            if child.poll() is not None:
                print(
                    f"drill: the encryptor FINISHED ({n} files) without being stopped: "
                    "the chain is broken (is the agent running and watching this dir, and "
                    "the collector's respond dry-run or enforce, not off?)",
                    flush=True,
                )
                break
            try:
                stopped = proc.status() == psutil.STATUS_STOPPED
            except psutil.Error:
                stopped = False
            if stopped:
                time.sleep(0.2)
                n, first = _progress(progress)
                after = time.time() - first if first else 0.0
                print(
                    f"drill: suspended by tocsin after {n} files, {after:.1f} s after the "
                    "first ruined file",
                    flush=True,
                )
                verdict = 0
                break
            time.sleep(0.1)
        else:
            print(
                f"drill: nothing stopped the encryptor within {args.timeout:g} s; is a "
                f"tocsin agent watching {root}?",
                flush=True,
            )
    finally:
        with contextlib.suppress(OSError):
            child.send_signal(9)
        child.wait()
        shutil.rmtree(share, ignore_errors=True)
        progress.unlink(missing_ok=True)
    return verdict
