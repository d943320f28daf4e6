"""Agent cost beside a bare watchdog observer, on the same tree, in one run.

Builds a tree of ``--files`` files (100,000), starts the real ``tocsin-agent``
(streaming to a tiny gRPC sink on 127.0.0.1 in this process) and, beside it, a
bare watchdog Observer with a no-op handler that counts events. Then measures,
for both processes (psutil cpu_times of the process, memory_info RSS):

- idle CPU over ``--idle-s`` (60) seconds;
- resident memory after the idle phase;
- CPU during a ``--storm-s`` (30) second storm of ``--rate`` (5,000) file
  events a second (a writer process creating a file = created + modified +
  closed, and deleting an older one = deleted: 4 events per cycle), with the
  events each lost: for the baseline, expected minus received; for the agent,
  events_dropped + queue_overflows reported in its windows.

Goals (issue 4): idle <= 0.5 % of one core, RSS <= 45 MB, storm <= 35 % of one core.
Usage: python bench/bench_agent.py [--files N] [--idle-s S] [--storm-s S] [--rate N]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from grpc_sink import GrpcSink

BASELINE = textwrap.dedent("""
    import sys, time, signal
    from watchdog.observers import Observer
    from watchdog.events import FileSystemEventHandler
    n = 0
    class H(FileSystemEventHandler):
        def on_any_event(self, event):
            global n
            n += 1
    o = Observer()
    o.schedule(H(), sys.argv[1], recursive=True)
    o.start()
    print("ready", flush=True)
    signal.signal(signal.SIGUSR1, lambda *_: print("events", n, flush=True))
    while True:
        time.sleep(3600)
""")

STORM = textwrap.dedent("""
    import os, sys, time
    root, rate, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    os.makedirs(root, exist_ok=True)
    cycles = int(rate / 4 * secs)
    start = time.monotonic()
    for i in range(cycles):
        due = start + i / (rate / 4)
        d = due - time.monotonic()
        if d > 0:
            time.sleep(d)
        with open(os.path.join(root, f"s{i}.tmp"), "w") as fh:
            fh.write("x")
        if i >= 100:
            os.unlink(os.path.join(root, f"s{i - 100}.tmp"))
    print(cycles, time.monotonic() - start, flush=True)
""")


def build_tree(root: Path, files: int, per_dir: int = 100) -> int:
    dirs = 0
    for i in range(0, files, per_dir):
        d = root / f"Service-{i // 10_000:02d}" / f"dossier-{i // per_dir:05d}"
        d.mkdir(parents=True, exist_ok=True)
        dirs += 1
        for j in range(i, min(i + per_dir, files)):
            (d / f"piece_{j:06d}.txt").write_bytes(b"x")
    return dirs


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def measure(procs: dict[str, psutil.Process], seconds: float) -> dict[str, float]:
    before = {k: cpu_s(p) for k, p in procs.items()}
    time.sleep(seconds)
    return {k: 100.0 * (cpu_s(p) - before[k]) / seconds for k, p in procs.items()}


def _drain(stream: object, lines: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--idle-s", type=float, default=60.0)
    ap.add_argument("--storm-s", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=5000.0, help="file events per second")
    ap.add_argument("--settle-s", type=float, default=10.0)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tocsin-bench-"))
    tree, state = work / "share", work / "state"
    agent = base = None
    sink = GrpcSink(max_messages=200_000)
    try:
        t0 = time.monotonic()
        dirs = build_tree(tree, args.files)
        print(
            f"tree: {args.files} files in {dirs} directories ({time.monotonic() - t0:.1f} s)",
            flush=True,
        )
        exe = Path(sys.executable).with_name("tocsin-agent")
        agent = subprocess.Popen(
            [
                str(exe),
                "--collector",
                sink.target,
                "--watch",
                str(tree),
                "--host-id",
                "bench",
                "--state-dir",
                str(state),
                "--insecure",
                "--tripwire",
                "dry-run",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        agent_log: list[str] = []
        assert agent.stderr is not None
        for line in agent.stderr:
            agent_log.append(line)
            if "watching" in line:
                break
        threading.Thread(target=_drain, args=(agent.stderr, agent_log), daemon=True).start()
        base = subprocess.Popen(
            [sys.executable, "-c", BASELINE, str(tree)], stdout=subprocess.PIPE, text=True
        )
        assert base.stdout is not None
        base.stdout.readline()
        procs = {"agent": psutil.Process(agent.pid), "baseline": psutil.Process(base.pid)}
        print(
            f"agent pid {agent.pid} (attribution line: "
            f"{[x.strip() for x in agent_log if 'watching' in x][-1][-40:]}), "
            f"baseline pid {base.pid}; settling {args.settle_s:.0f} s",
            flush=True,
        )
        time.sleep(args.settle_s)

        print(f"idle: {args.idle_s:.0f} s ...", flush=True)
        idle = measure(procs, args.idle_s)
        rss = {k: p.memory_info().rss / 2**20 for k, p in procs.items()}

        lost_before = sum(w.events_dropped + w.queue_overflows for w in sink.windows())
        print(f"storm: {args.rate:.0f} events/s for {args.storm_s:.0f} s ...", flush=True)
        storm_dir = tree / "storm"
        writer = subprocess.Popen(
            [sys.executable, "-c", STORM, str(storm_dir), str(args.rate), str(args.storm_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        storm = measure(procs, args.storm_s)
        out, _ = writer.communicate(timeout=120)
        cycles, took = out.split()
        expected = 4 * int(cycles) - 100  # the last 100 files are not deleted
        time.sleep(3)  # let the last windows arrive
        base.send_signal(signal.SIGUSR1)
        received = 0
        for _ in range(3):
            line = base.stdout.readline()
            if line.startswith("events"):
                received = int(line.split()[1])
                break
        # Baseline counts every event (directory echoes too): only file events compared.
        windows = sink.windows()
        agent_lost = sum(w.events_dropped + w.queue_overflows for w in windows) - lost_before
        agent_seen = sum(
            w.events_created + w.events_modified + w.events_deleted + w.events_moved
            for w in windows
        )
        rss_after = {k: p.memory_info().rss / 2**20 for k, p in procs.items()}
    finally:
        for p in (agent, base):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)

    rate_real = int(cycles) * 4 / float(took)
    print()
    print(f"{'':34}{'agent':>12}{'bare watchdog':>15}{'ratio':>9}{'goal':>12}")
    rows = [
        (
            f"idle CPU, {args.files} files, {args.idle_s:.0f} s (% core)",
            idle["agent"],
            idle["baseline"],
            "<= 0.5",
        ),
        ("RSS after idle (MB)", rss["agent"], rss["baseline"], "<= 45"),
        (
            f"storm CPU, {rate_real:.0f} ev/s x {args.storm_s:.0f} s (%)",
            storm["agent"],
            storm["baseline"],
            "<= 35",
        ),
        ("RSS after storm (MB)", rss_after["agent"], rss_after["baseline"], ""),
    ]
    for name, a, b, goal in rows:
        ratio = f"{a / b:.2f}" if b > 0 else "-"
        print(f"{name:34}{a:12.2f}{b:15.2f}{ratio:>9}{goal:>12}")
    print(
        f"{'storm events lost':34}{agent_lost:12d}{max(expected - received, 0):15d}{'':>9}{'':>12}"
    )
    print(
        f"\nstorm writer: {int(cycles)} cycles (4 events each) in {float(took):.1f} s; "
        f"agent windows: {len(windows)}, file events counted {agent_seen}; "
        f"baseline handler events {received} (includes directory events)"
    )
    ok = idle["agent"] <= 0.5 and rss["agent"] <= 45 and storm["agent"] <= 35
    print("goals met" if ok else "GOALS MISSED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
