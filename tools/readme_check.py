"""Run the README's server section, as written, on a throw-away systemd machine.

Needs root, util-linux (unshare, nsenter) and systemd installed (it need not be
running). Boots systemd as PID 1 of new pid, mount, network, uts and ipc
namespaces, on an overlay of ``/`` (and of this checkout) whose writes go to a
tmpfs: nothing reaches the disk, and the machine's network namespace has only
loopback (pip can use the package indexes configured on local paths, nothing
else). Then, in ONE bash session inside it (exports carry over, as in a
sysadmin's terminal; the working directory is this checkout), it runs every
command of every code block of the README section "On a real server", in
order, with ``COLLECTOR`` replaced by ``localhost``; before the block that
starts the services it makes the edits the README asks of the sysadmin
(``SITE_EDITS``: the collector's address, a share with a few documents, a
webhook receiver). It prints each command, its exit status and the tail of its
output, then checks what the README promises (the agent listed by
``tocsin hosts``, the webhook test received, the drill stopped) and exits 0
only when every command and every check passed.

    python tools/readme_check.py [--keep]     # --keep: leave the machine running
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## On a real server"
PLACEHOLDERS = {"COLLECTOR": "localhost"}
HOOKS = "/root/readme-hooks.jsonl"
# New pid, mount, network, uts and ipc namespaces; mounts made there stay there.
NAMESPACES = ["--mount", "--pid", "--fork", "--net", "--uts", "--ipc"]
UNSHARE = ["unshare", *NAMESPACES, "--propagation", "private"]

BOOT = r"""
set -e
R="$1"; REPO="$2"
mount -t tmpfs tmpfs "$R"
mkdir -p "$R/up" "$R/work" "$R/root" "$R/repo-up" "$R/repo-work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$R/up,workdir=$R/work" "$R/root"
mkdir -p "$R/root$REPO"
mount -t overlay overlay -o "lowerdir=$REPO,upperdir=$R/repo-up,workdir=$R/repo-work" "$R/root$REPO"
mount --rbind /dev "$R/root/dev"
mount -t proc proc "$R/root/proc"
mount -t sysfs sysfs "$R/root/sys"
mount -t cgroup2 cgroup2 "$R/root/sys/fs/cgroup"
mount -t tmpfs tmpfs "$R/root/run"
mount -t tmpfs tmpfs "$R/root/tmp"
mkdir -p "$R/root/.oldroot"
cd "$R/root"
pivot_root . .oldroot
umount -l /.oldroot
exec /lib/systemd/systemd --system --unit=multi-user.target
"""

# What the README leaves to the sysadmin's editor, done before the services start.
SITE_EDITS = f"""
sed -i 's|^collector = .*|collector = "localhost:7443"|' /etc/tocsin/agent.toml
sed -i 's|^webhook = .*|webhook = ["http://127.0.0.1:8088/hook"]|' /etc/tocsin/collector.toml
mkdir -p /srv/partage/Etat-civil /srv/partage/Urbanisme
for i in 1 2 3 4 5; do echo "Compte rendu du conseil $i" > /srv/partage/Etat-civil/cr$i.txt; done
systemd-run --quiet --unit=readme-receiver /usr/bin/python3 {ROOT}/tools/receiver.py \
  webhook 127.0.0.1 8088 {HOOKS}
"""


def readme_blocks(text: str) -> list[str]:
    """The shell code blocks of the README's server section, in order."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"^```\n(.*?)^```", section, flags=re.S | re.M)


def commands(block: str) -> list[str]:
    out = []
    for line in block.splitlines():
        if line.strip():
            for k, v in PLACEHOLDERS.items():
                line = re.sub(rf"\b{k}\b", v, line)
            out.append(line)
    return out


class Machine:
    """systemd as PID 1 in throw-away namespaces, and one root shell inside it."""

    def __init__(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="tocsin-readme-"))
        script = self.scratch / "boot.sh"
        script.write_text(BOOT)
        mnt = self.scratch / "mnt"
        mnt.mkdir()
        self.unshare = subprocess.Popen(
            [*UNSHARE, "sh", str(script), str(mnt), str(ROOT)],
            stdout=(self.scratch / "boot.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        self.pid = self._init_pid()
        self.shell: subprocess.Popen[str] | None = None

    def _init_pid(self) -> int:
        deadline = time.monotonic() + 30
        path = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
        while time.monotonic() < deadline:
            kids = path.read_text().split() if path.exists() else []
            if kids and Path(f"/proc/{kids[0]}/comm").read_text().strip() == "systemd":
                return int(kids[0])
            if self.unshare.poll() is not None:
                break
            time.sleep(0.2)
        log = (self.scratch / "boot.log").read_text()
        raise SystemExit(f"readme-check: systemd did not boot: {log.strip()[-300:]}")

    def enter(self, *argv: str) -> list[str]:
        env = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        env += ["HOME=/root", "LANG=C.UTF-8", "TERM=dumb"]
        return ["nsenter", "-t", str(self.pid), "-a", "-r", "-w", *env, *argv]

    def wait_running(self) -> str:
        state = ""
        for _ in range(150):
            res = subprocess.run(
                self.enter("systemctl", "is-system-running"), capture_output=True, text=True
            )
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        return state

    def run(self, cmd: str) -> tuple[int, str]:
        """Run one command line in the session shell; (exit status, output)."""
        if self.shell is None:
            self.shell = subprocess.Popen(
                self.enter("bash", "--noprofile", "--norc"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            assert self.shell.stdin is not None
            self.shell.stdin.write(f"cd {ROOT}\nexec 2>&1\n")
        assert self.shell.stdin is not None and self.shell.stdout is not None
        mark = f"__readme_rc_{time.monotonic_ns()}__"
        # A group in this shell (exports stay), its stdin not the session's script.
        self.shell.stdin.write(f"{{ {cmd}\n}} </dev/null\necho {mark}$?\n")
        lines = []
        for line in self.shell.stdout:
            if line.startswith(mark):
                return int(line[len(mark) :]), "".join(lines)
            lines.append(line)
        return -1, "".join(lines)

    def close(self) -> None:
        if self.shell is not None:
            self.shell.kill()
        os.kill(self.pid, 9)
        self.unshare.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave the machine running")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("readme-check: needs root (namespaces, systemd as PID 1)", file=sys.stderr)
        return 2
    blocks = readme_blocks((ROOT / "README.md").read_text())
    machine = Machine()
    failures: list[str] = []
    outputs: dict[str, str] = {}
    try:
        print(f"machine: systemd pid {machine.pid}, state {machine.wait_running()}", flush=True)
        for block in blocks:
            if "systemctl daemon-reload" in block:
                status, out = machine.run(SITE_EDITS.strip())
                print(f"[site edits] exit {status}", flush=True)
                if status:
                    failures.append(f"site edits: {out.strip()[-300:]}")
            for cmd in commands(block):
                t0 = time.monotonic()
                status, out = machine.run(cmd)
                outputs[cmd] = out
                tail = "\n    ".join(out.strip().splitlines()[-4:])
                print(f"$ {cmd}\n  exit {status} in {time.monotonic() - t0:.1f} s", flush=True)
                if tail:
                    print(f"    {tail}", flush=True)
                if status != 0:
                    failures.append(f"{cmd}: exit {status}")
        hosts = next((o for c, o in outputs.items() if c.startswith("tocsin hosts")), "")
        if "fs1" not in hosts:
            failures.append("check: `tocsin hosts` does not list fs1")
        status, out = machine.run(f"cat {HOOKS}")
        events = [json.loads(x)["body"].get("event") for x in out.splitlines() if x.strip()]
        print(f"[check] webhook events received: {events}", flush=True)
        if "test" not in events:
            failures.append("check: the webhook test message did not arrive")
        drill = next((o for c, o in outputs.items() if c.startswith("tocsin-agent drill")), "")
        if "suspended by tocsin" not in drill:
            failures.append("check: the drill was not stopped")
        if "alert" not in events:
            failures.append("check: no alert webhook for the drill")
    finally:
        if args.keep:
            print(f"machine left running: nsenter -t {machine.pid} -a -r -w bash")
        else:
            machine.close()
    for f in failures:
        print(f"FAILED: {f}")
    print("readme-check: every command ran as written" if not failures else "readme-check: FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
