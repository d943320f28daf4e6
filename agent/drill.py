"""``tocsin-agent drill --dir DIR``: a harmless simulated attack that proves the chain.

Contract: builds a scratch share under DIR (refuses a non-empty DIR that is not
an earlier drill's), runs the simulated in-place encryptor as a child process,
and watches it. Exit 0 when the child was stopped (SIGSTOP by tocsin) before
it finished, 1 when it finished or the timeout passed without being stopped
(the chain is broken). Always kills the child and removes the scratch share.

What makes it a drill (the collector then never isolates the host): the
running agent issues a random key at every start (``DrillKey.issue``: the
file ``drill.key`` in its state directory, mode 0600, root's). The drill reads
it (only root can) and hands it to its children in their environment
(``TOCSIN_DRILL_KEY``), which /proc shows only to root and their owner; the
agent recognises a drill by that key in the writer's environment
(``DrillKey.carried_by``). A process that merely names ``tocsin-drill`` in its
command line is any other process.

Never touches anything outside DIR: DIR must be owned by the drill's own user
(root, run beside the service) and writable by nobody else, is opened
component by component with O_NOFOLLOW, and every file is then reached
through that directory's descriptor (``/proc/self/fd/N`` for the children): a
symlink planted in DIR's place, or swapped for it while the drill runs, leads
nowhere.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import psutil

from tocsin.agent import _linux
from tocsin.v1.errors import ConfigError

MARKER = ".tocsin-drill"
KEY_FILE = "drill.key"
KEY_ENV = "TOCSIN_DRILL_KEY"
DEFAULT_STATE_DIR = Path("/var/lib/tocsin-agent")
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class DrillKey:
    """The secret that tells the agent's drills from every other process (see module contract)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entry = f"{KEY_ENV}={key}".encode()

    @classmethod
    def issue(cls, state_dir: Path) -> DrillKey:
        """A new key, written to ``state_dir/drill.key`` (0600) in place of any earlier one."""
        key = os.urandom(24).hex()
        dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        tmp = f".{KEY_FILE}.{os.getpid()}"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=dfd)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
            os.replace(tmp, KEY_FILE, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)
        return cls(key)

    @classmethod
    def read(cls, state_dir: Path) -> DrillKey:
        """The running agent's key; ConfigError when there is none this user may trust."""
        path = state_dir / KEY_FILE
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except OSError as exc:
            raise ConfigError(
                f"{path}: {exc.strerror}: the drill needs the key of a running agent "
                "(run it as root, with the agent's --state-dir)"
            ) from None
        with os.fdopen(fd) as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path}: not a private file of this user; not trusted")
            key = f.read(128).strip()
        if len(key) < 32:
            raise ConfigError(f"{path}: no key in it")
        return cls(key)

    def environment(self) -> dict[str, str]:
        """This process's environment plus the key: what a drill's children run with."""
        return {**os.environ, KEY_ENV: self.key}

    def carried_by(self, pid: int) -> bool:
        """True when ``pid`` was started with this key in its environment."""
        return any(hmac.compare_digest(e, self._entry) for e in _linux.environ(pid))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message.replace("\n", " "))


def open_scratch(root: Path) -> int:
    """Open (creating it if needed) the drill directory ``root``; its fd, or ConfigError."""
    try:
        parent = _linux.open_dir_nofollow(str(root.parent))
    except OSError as exc:
        raise ConfigError(f"--dir {root}: {root.parent}: {exc.strerror} (no symlinks)") from None
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(root.name, 0o755, dir_fd=parent)
        fd = os.open(root.name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        raise ConfigError(f"--dir {root}: {exc.strerror} (a directory, not a symlink)") from None
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if not _linux.mine_only(st):
        os.close(fd)
        raise ConfigError(
            f"--dir {root}: owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}: "
            "the drill works only in a directory owned by its own user (root for the"
            " service) that nobody else can write"
        )
    names = os.listdir(fd)
    try:
        marker = os.stat(MARKER, dir_fd=fd, follow_symlinks=False)
        earlier = stat.S_ISREG(marker.st_mode)
    except FileNotFoundError:
        earlier = False
    if names and not earlier:
        os.close(fd)
        raise ConfigError(f"--dir {root}: not empty and not an earlier drill directory")
    return fd


def _progress(fd: int) -> tuple[int, float]:
    try:
        pfd = os.open("progress.log", os.O_RDONLY | _NOFOLLOW, dir_fd=fd)
    except OSError:
        return 0, 0.0
    with os.fdopen(pfd) as f:
        lines = f.read().splitlines()
    first = float(lines[0].split(" ", 1)[0]) if lines else 0.0
    return len(lines), first


def _clean(fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree("share", dir_fd=fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink("progress.log", dir_fd=fd)


def main(argv: list[str]) -> int:
    p = _Parser(prog="tocsin-agent drill")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="the running agent's state dir"
    )
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--rate", type=float, default=50.0, help="files ruined per second")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    root: Path = args.dir.absolute()
    fd = open_scratch(root)
    try:
        return _drill(fd, root, DrillKey.read(args.state_dir), args)
    finally:
        os.close(fd)


def _drill(fd: int, root: Path, key: DrillKey, args: argparse.Namespace) -> int:
    mfd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o644, dir_fd=fd)
    with os.fdopen(mfd, "w") as f:
        f.write("tocsin drill scratch directory\n")
    _clean(fd)
    here = f"/proc/self/fd/{fd}"  # DIR itself, whatever its path names by now
    sim = [sys.executable, "-m", "tocsin.agent.simulate"]
    env = key.environment()
    made = subprocess.run(
        [*sim, "share", f"{here}/share", "--files", str(args.files)], pass_fds=(fd,), env=env
    )
    if made.returncode != 0:
        print(f"drill: could not build the scratch share in {root}", flush=True)
        _clean(fd)
        return 1
    print(
        f"drill: scratch share of {args.files} files in {root / 'share'}; encrypting at "
        f"{args.rate:g} files/s (a running tocsin agent must watch {root})",
        flush=True,
    )
    child = subprocess.Popen(
        [
            *sim,
            "run",
            "encrypt-inplace",
            f"{here}/share",
            "--rate",
            str(args.rate),
            "--progress",
            f"{here}/progress.log",
            "--tag",
            "tocsin-drill",
        ],
        pass_fds=(fd,),
        env=env,
    )
    proc = psutil.Process(child.pid)
    deadline = time.monotonic() + args.timeout
    verdict = 1
    last = -1
    try:
        while time.monotonic() < deadline:
            n, first = _progress(fd)
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
                n, first = _progress(fd)
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
        _clean(fd)
    return verdict
