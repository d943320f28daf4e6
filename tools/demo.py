"""`make demo`: the whole tocsin chain on this machine, on loopback, in about a minute.

Starts a collector (respond=enforce), a webhook receiver standing in for the
chat tool, and an agent watching a scratch share; then runs
``tocsin-agent drill``, which encrypts a scratch copy with a harmless child
process. Prints the alert and the action reports as the chat tool would get
them, the operator's view, and cleans everything up. Nothing leaves 127.0.0.1
and nothing outside a temporary directory is touched.
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from receiver import WebhookReceiver

BIN = Path(sys.executable).parent
HOST_ID = "demo-fileserver"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def wait_listening(log: Path, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        m = re.search(r"listening on (\S+:\d+)", log.read_text(errors="replace"))
        if m:
            return m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    sys.exit(f"demo: the collector did not start:\n{log.read_text(errors='replace')}")


def host_connected(collector: str) -> bool:
    res = subprocess.run(
        [str(BIN / "tocsin"), "hosts", "--json", "--collector", collector, "--insecure"],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        return False
    return any(h["host_id"] == HOST_ID and h["connected"] for h in json.loads(res.stdout))


def show_webhook(body: dict[str, Any]) -> None:
    if body.get("event") == "alert":
        proc = body.get("process") or {}
        print(f"  [{body['severity'].upper()}] {body.get('summary', '')}")
        print(
            f"    host={body['host_id']} score={body['score']:.2f} "
            f"process={proc.get('name')} pid={proc.get('pid')}"
        )
        print(f"    reasons: {', '.join(body['reasons'])}")
        for act in body.get("actions", []):
            print(f"    action: {act['action']} -> {act['status']}")
    else:
        print(
            f"  [{body.get('event')}] {body.get('action', '')} -> {body.get('status', '')}"
            f" {body.get('detail', '')}"
        )


def show_console(collector: str) -> None:
    """Print a one-time sign-in link to the console; in a terminal, keep it open a while."""
    say("the web console (tocsin console login)")
    subprocess.run(
        [str(BIN / "tocsin"), "console", "login", "--collector", collector, "--insecure"]
    )
    if not sys.stdin.isatty():
        return
    print("\nOpen the link in a browser on this machine to see the drill's incident.")
    print("Press Enter to end the demo (it ends by itself in 10 minutes).", flush=True)
    ready, _, _ = select.select([sys.stdin], [], [], 600)
    if ready:
        sys.stdin.readline()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tocsin-demo-") as tmp_name:
        tmp = Path(tmp_name)
        share = tmp / "share"
        share.mkdir()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            with WebhookReceiver() as hooks:
                say(f"webhook receiver (stands in for your chat tool) on {hooks.url}")
                clog = tmp / "collector.log"
                conf = tmp / "collector.toml"
                conf.write_text('console = "127.0.0.1:0"\n', encoding="utf-8")
                procs.append(
                    subprocess.Popen(
                        [
                            str(BIN / "tocsin-collector"),
                            "--listen",
                            "127.0.0.1:0",
                            "--db",
                            str(tmp / "collector.db"),
                            "--webhook",
                            hooks.url,
                            "--respond",
                            "enforce",
                            "--insecure",
                            "--config",
                            str(conf),
                        ],
                        stdout=clog.open("wb"),
                        stderr=subprocess.STDOUT,
                    )
                )
                collector = wait_listening(clog, procs[-1])
                say(f"collector listening on {collector} (respond=enforce)")

                alog = tmp / "agent.log"
                procs.append(
                    subprocess.Popen(
                        [
                            str(BIN / "tocsin-agent"),
                            "--collector",
                            collector,
                            "--watch",
                            str(share),
                            "--host-id",
                            HOST_ID,
                            "--state-dir",
                            str(tmp / "agent-state"),
                            "--insecure",
                        ],
                        stdout=alog.open("wb"),
                        stderr=subprocess.STDOUT,
                    )
                )
                end = time.monotonic() + 30
                while not host_connected(collector):
                    if time.monotonic() > end or procs[-1].poll() is not None:
                        sys.exit(f"demo: the agent did not connect:\n{alog.read_text()}")
                    time.sleep(0.3)
                say(f"agent {HOST_ID} connected, watching {share}")

                say("drill: a harmless process encrypts a scratch share")
                drill = subprocess.run(
                    [
                        *(str(BIN / "tocsin-agent"), "drill", "--dir", str(share / "drill")),
                        *("--state-dir", str(tmp / "agent-state")),
                    ],
                )
                time.sleep(1.5)  # let the last action reports arrive

                say("what your chat tool received")
                for body in hooks.bodies:
                    show_webhook(body)

                say("tocsin alerts")
                subprocess.run(
                    [str(BIN / "tocsin"), "alerts", "--collector", collector, "--insecure"]
                )
                say("tocsin hosts")
                subprocess.run(
                    [str(BIN / "tocsin"), "hosts", "--collector", collector, "--insecure"]
                )
                ok = drill.returncode == 0 and any(
                    b.get("severity") == "critical" for b in hooks.bodies
                )
                say("demo " + ("passed: alert sent, attacker suspended" if ok else "FAILED"))
                if not ok:
                    print(clog.read_text(errors="replace")[-3000:])
                    print(alog.read_text(errors="replace")[-3000:])
                    return 1
                show_console(collector)
                return 0
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
