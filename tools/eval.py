"""The evaluation suite: every simulated workload through the real agent and collector.

    python tools/eval.py [--out docs/evaluation.md] [--rate 200] [--files 600] [NAME ...]

One real ``tocsin-collector`` (respond=enforce) and one in-process webhook
receiver on 127.0.0.1. For each workload of ``tocsin.agent.simulate``: a fresh
scratch share, a real ``tocsin-agent`` watching it under its own host id (the
agent's tripwire at its shipped default), then the workload as its own process
with ``--progress`` (one "<unix time> <path>" line per finished file).

Measured per workload: whether a critical alert arrived, the seconds from the
first ruined file to the critical webhook's receipt, the files ruined before
the process was suspended (progress lines when its state became "stopped"),
and the warnings and criticals posted for the host. Each attack style runs
``--repeat`` times (median and maximum of the files ruined). Each benign job
runs once live (night 1, the agent recording what it sends), then its
recording is replayed into the same collector under the same host id shifted
by one and two days (nights 2 and 3, ``tocsin replay --keep-dates``, the
collector allowing three days of clock skew): warnings per night.
Workloads run as drills: the agent's drill key in their environment
(``tocsin.agent.drill``), so the collector suspends them for real but never
isolates (a drill never isolates); nothing else changes in the judgement. The
evasions are the exception: ``encrypt-drill-marker`` names the drill marker but
has no key, and must be isolated like any attacker. Loopback only.

Then the tripwire alone (all workloads asked, not a list): the agent with
``--tripwire enforce`` and its collector unreachable, each encrypt-in-place and
encrypt-to-copy style ``--repeat`` times: files ruined before the agent's own
tripwire stopped the attack.

Then, as root with Samba installed (``--no-smb`` skips it), the attack over the
share: a real smbd and agent in a file server's network namespace, an
attacking and a colleague's workstation speaking SMB 3 from two more, the
collector in a fourth (``tests/sambaserver.py``, the SMB end-to-end test's
town), once per style (in place, encrypted copy, rename then encrypt; agent
tripwire on): files ruined before the attacker's smbd worker stopped, seconds
to the critical webhook, and the colleague's saves (one every 0.5 s) that
succeeded and failed from the attack's start to the release. Writes a markdown table and
fills the ``evaluation.end_to_end`` section of ``models/baseline.json``
(``--no-card`` leaves the card alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from receiver import WebhookReceiver
from tocsin.agent.drill import DrillKey
from tocsin.agent.simulate import ATTACKS, BENIGN, make_share, run_argv
from tocsin.v1.recording import Recorder, read_recording

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DRILL_TAG = "tocsin-drill"
# Order of the table: attacks first, then benign jobs.
DEFAULT_ATTACKS = (
    "encrypt-inplace",
    "encrypt-copy",
    "encrypt-stripes",
    "encrypt-head",
    "encrypt-base64",
    "encrypt-workers",
    "encrypt-burst",
    "encrypt-slow",
    "encrypt-pattern",
    "encrypt-hex",
    "encrypt-medusa",
    "encrypt-copy-stem",
    "encrypt-copy-b64",
    "encrypt-as-sshd",
    "encrypt-per-file",
    "encrypt-drill-marker",
    "evade-non-utf8-name",
    "evade-fifo-document",
)
# Forged drills: the marker in the command line, not the agent's key.
FORGED_DRILLS = frozenset({"encrypt-drill-marker"})
NIGHTS_AHEAD_S = 3 * 86_400  # the collector's allowed clock skew: the replayed nights
DEFAULT_BENIGN = (
    "backup-targz",
    "backup-encrypted",
    "gzip-logs",
    "photo-import",
    "office-saves",
    "sqlite-churn",
    "mass-delete",
    "source-checkout",
    "rsync-mirror",
    "backup-gpg-files",
    "convert-images",
    "zip-folders",
    "sed-inplace",
)
DESCRIPTIONS = {
    "encrypt-inplace": "in-place encryption",
    "encrypt-copy": "encrypted copy .locked, original deleted, note per directory",
    "encrypt-stripes": "intermittent: every other 16 bytes",
    "encrypt-head": "intermittent: first 4 KiB only",
    "encrypt-base64": "encrypted, written as base64 text",
    "encrypt-workers": "8 cooperating worker processes",
    "encrypt-burst": "short burst of 20 files",
    "encrypt-slow": "slow attack, 2 files/s",
    "backup-targz": "tar+gzip backup of the share",
    "backup-encrypted": "encrypted backup (tar.gz then cipher, new file)",
    "gzip-logs": "log rotation with gzip",
    "photo-import": "photo import (300 JPEG)",
    "office-saves": "bulk office saves",
    "sqlite-churn": "SQLite churn (2000 transactions)",
    "mass-delete": "mass delete (two departments)",
    "source-checkout": "source checkout (400 files, zlib objects)",
    "rsync-mirror": "rsync mirror (temp names renamed into place)",
    "encrypt-pattern": "intermittent: 64 of every 192 bytes",
    "encrypt-hex": "encrypted, written as hex text",
    "encrypt-medusa": "Medusa style: a note in every directory first, then name.ext.MEDUSA "
    "copies, originals deleted",
    "encrypt-copy-stem": "notes first, then name.MEDUSA copies (extension replaced), "
    "originals deleted",
    "encrypt-copy-b64": "notes first, then name.ext.MEDUSA.b64 base64 copies, originals deleted",
    "encrypt-as-sshd": "in-place encryption by a process calling itself sshd (prctl)",
    "encrypt-per-file": (
        "one short process per file (sh -c 'head | dd'), as find -exec runs them: the "
        "launcher is named from the kernel's process events and stopped"
    ),
    "encrypt-drill-marker": "in-place encryption naming the drill marker, without the key",
    "backup-gpg-files": "encrypted backup: a .gpg copy of every file, nothing deleted",
    "convert-images": "image conversion (png <-> jpg, the source removed)",
    "zip-folders": "compress each year folder into a zip, files removed",
    "sed-inplace": "sed -i over every text file",
    "evade-non-utf8-name": "a file named notes-\\xff.txt (not UTF-8) planted, then in-place",
    "evade-fifo-document": "a named pipe renamed into place as budget.docx, then in-place",
}


@dataclass
class Row:
    name: str
    kind: str
    rate_per_s: float
    files_done: int = 0
    detected: bool = False
    seconds_to_critical: float | None = None
    ruined_before_stop: int | None = None
    stopped: bool = False
    warnings: int = 0
    criticals: int = 0
    wall_s: float = 0.0
    reasons: list[str] = field(default_factory=list)
    # What the critical alert said of isolating the host ("sent", "skipped: drill"...).
    isolate: str = ""
    note: str = ""
    # Attacks: files ruined before the stop, one per run. Benign jobs: warnings per night.
    ruined_runs: list[int] = field(default_factory=list)
    warnings_by_night: list[int] = field(default_factory=list)


def wait_for(check: Callable[[], Any], timeout_s: float, interval_s: float = 0.1) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    return None


def progress_times(path: Path) -> list[float]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():  # paths are bytes
        head = line.split(" ", 1)[0]
        try:
            out.append(float(head))
        except ValueError:
            continue
    return out


def tree_stopped(proc: psutil.Process) -> bool:
    """True when the process and every child it has are stopped; a child that exited
    while its stopped parent cannot reap it (a zombie) writes nothing more either."""
    try:
        kids = proc.children(recursive=True)
        return proc.status() == psutil.STATUS_STOPPED and all(
            p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE) for p in kids
        )
    except psutil.NoSuchProcess:
        return False


AGENT_LOG = "agent.log"


def start_agent(
    collector: str, share: Path, host_id: str, work: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """A real ``tocsin-agent`` watching ``share``, its state and log in ``work``."""
    return subprocess.Popen(
        [
            str(BIN / "tocsin-agent"),
            "--collector",
            collector,
            "--watch",
            str(share),
            "--host-id",
            host_id,
            "--state-dir",
            str(work / "state"),
            "--insecure",
            *extra,
        ],
        stdout=(work / AGENT_LOG).open("wb"),
        stderr=subprocess.STDOUT,
    )


def launch(
    name: str, share: Path, rate: float, progress: Path, env: dict[str, str] | None
) -> subprocess.Popen[bytes]:
    """The workload ``name`` on ``share`` as its own process, its files logged to ``progress``."""
    return subprocess.Popen(
        run_argv(name, share, rate, progress, DRILL_TAG),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def until_stopped(workload: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until the workload's whole tree is stopped (True), it ended or time ran out."""
    proc = psutil.Process(workload.pid)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and workload.poll() is None:
        if tree_stopped(proc):
            return True
        time.sleep(0.01)
    return False


def kill_tree(pid: int) -> None:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGCONT)
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)


class Suite:
    def __init__(
        self, tmp: Path, hooks: WebhookReceiver, files: int, settle_s: float, seed: int = 0
    ) -> None:
        self.tmp, self.hooks, self.files, self.settle_s = tmp, hooks, files, settle_s
        self.rng = random.Random(seed)
        self.addr = ""
        self.collector: subprocess.Popen[bytes] | None = None

    def start_collector(self) -> None:
        log = self.tmp / "collector.log"
        self.collector = subprocess.Popen(
            [
                str(BIN / "tocsin-collector"),
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(self.tmp / "collector.db"),
                "--webhook",
                self.hooks.url,
                "--respond",
                "enforce",
                "--insecure",
                # Nights 2 and 3 are replayed one and two days ahead of this clock.
                "--max-clock-skew-s",
                str(NIGHTS_AHEAD_S),
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

        def listening() -> str:
            m = re.search(r"listening on (\S+:\d+)", log.read_text(errors="replace"))
            return m.group(1) if m else ""

        self.addr = wait_for(listening, 30) or ""
        if not self.addr:
            raise SystemExit("eval: the collector did not start\n" + log.read_text())

    def connected(self, host_id: str) -> bool:
        res = subprocess.run(
            [str(BIN / "tocsin"), "hosts", "--json", "--collector", self.addr, "--insecure"],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            return False
        return any(h["host_id"] == host_id and h["connected"] for h in json.loads(res.stdout))

    def alerts(self, host_id: str) -> list[dict[str, Any]]:
        with self.hooks._server.lock:
            recs = list(self.hooks._server.received)
        return [
            {**r["body"], "_received_at": r["received_at"]}
            for r in recs
            if isinstance(r["body"], dict)
            and r["body"].get("event") == "alert"
            and r["body"].get("host_id") == host_id
        ]

    def replay_night(self, recording: Path, host_id: str, night: int) -> int:
        """Replay ``recording`` as if the job ran ``night - 1`` days later: warnings posted."""
        shifted = recording.with_name(f"night{night}.jsonl")
        shift_s = (night - 1) * 86_400
        rec = Recorder(shifted)
        for msg in read_recording(recording):
            if msg.HasField("hello"):
                msg.hello.boot_id = f"{msg.hello.boot_id}-night{night}"
            if msg.HasField("window"):
                for ts in (msg.window.start, msg.window.end):
                    ts.seconds += shift_s
            rec.write(msg)
        rec.close()
        before = len(self.alerts(host_id))
        subprocess.run(
            [
                str(BIN / "tocsin"),
                "replay",
                str(shifted),
                "--collector",
                self.addr,
                "--insecure",
                "--speed",
                "0",
                "--host-id",
                host_id,
                "--keep-dates",
            ],
            check=True,
            capture_output=True,
        )
        time.sleep(self.settle_s)  # the posts of the last windows
        new = self.alerts(host_id)[before:]
        return sum(1 for a in new if a.get("severity") == "warning")

    def run(self, name: str, rate: float, timeout_s: float, attempt: int = 0) -> Row:
        kind = "attack" if name in ATTACKS else "benign"
        row = Row(name, kind, rate if name != "encrypt-slow" else 2.0)
        work = self.tmp / (name if not attempt else f"{name}-{attempt}")
        share = work / "share"
        make_share(share, files=self.files, seed=11)
        host_id = f"eval-{name}" if not attempt else f"eval-{name}-{attempt}"
        recording = work / "night1.jsonl"
        agent = start_agent(
            self.addr,
            share,
            host_id,
            work,
            *(["--record", str(recording)] if kind == "benign" else []),
        )
        workload: subprocess.Popen[bytes] | None = None
        try:
            if not wait_for(lambda: self.connected(host_id), 30, 0.3):
                row.note = "agent never connected"
                return row
            # A random phase against the agent's 1 s windows (seeded per workload), so
            # the figures are not those of one lucky or unlucky alignment.
            time.sleep(self.settle_s + self.rng.random())
            progress = work / "progress.log"
            key = DrillKey.read(work / "state")
            env = None if name in FORGED_DRILLS else key.environment()
            t0 = time.monotonic()
            workload = launch(name, share, rate, progress, env)
            row.stopped = until_stopped(workload, timeout_s)
            if row.stopped:
                row.ruined_before_stop = len(progress_times(progress))
            elif workload.poll() is None:
                row.note = f"still running after {timeout_s:.0f} s"
            row.wall_s = round(time.monotonic() - t0, 2)
            # Late alerts (benign jobs, or the critical after a burst ended) need time.
            time.sleep(self.settle_s if kind == "attack" and row.stopped else 2 * self.settle_s)
            times = progress_times(progress)
            row.files_done = len(times)
            alerts = self.alerts(host_id)
            row.warnings = sum(1 for a in alerts if a.get("severity") == "warning")
            crit = [a for a in alerts if a.get("severity") == "critical"]
            row.criticals = len(crit)
            row.detected = bool(crit)
            if crit and times:
                row.seconds_to_critical = round(crit[0]["_received_at"] - times[0], 3)
                row.reasons = list(crit[0].get("reasons", []))
                isolate = [a for a in crit[0].get("actions", []) if a.get("action") == "isolate"]
                row.isolate = str(isolate[0].get("status", "")) if isolate else ""
            elif alerts:
                row.reasons = list(alerts[0].get("reasons", []))
            if row.ruined_before_stop is not None:
                row.ruined_runs = [row.ruined_before_stop]
        finally:
            if workload is not None:
                kill_tree(workload.pid)
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        if kind == "benign":
            row.warnings_by_night = [row.warnings]
            row.warnings_by_night += [self.replay_night(recording, host_id, n) for n in (2, 3)]
        return row

    def stop(self) -> None:
        if self.collector is not None and self.collector.poll() is None:
            self.collector.send_signal(signal.SIGTERM)
            try:
                self.collector.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.collector.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def merge_runs(runs: list[Row]) -> Row:
    """One row for the repeated runs of an attack style: the median run's figures, every
    run's files ruined (the style is detected or suspended only if every run was)."""
    ruined = [n for r in runs for n in r.ruined_runs]
    secs = [r.seconds_to_critical for r in runs if r.seconds_to_critical is not None]
    row = sorted(runs, key=lambda r: r.ruined_before_stop if r.ruined_before_stop else 1e9)[
        (len(runs) - 1) // 2
    ]
    row.ruined_runs = ruined
    row.detected = all(r.detected for r in runs)
    row.stopped = all(r.stopped for r in runs)
    row.seconds_to_critical = round(statistics.median(secs), 3) if secs else None
    row.note = "; ".join(sorted({r.note for r in runs if r.note}))
    return row


def summary(rows: list[Row], rate: float) -> dict[str, Any]:
    fast = [r for r in rows if r.kind == "attack" and r.rate_per_s == rate]
    attacks = [r for r in rows if r.kind == "attack"]
    benign = [r for r in rows if r.kind == "benign"]
    ruined = [float(n) for r in fast for n in r.ruined_runs]
    secs = [r.seconds_to_critical for r in fast if r.seconds_to_critical is not None]
    nights = [r.warnings_by_night for r in benign if r.warnings_by_night]
    return {
        "attacks": len(attacks),
        "attacks_detected": sum(r.detected for r in attacks),
        "attacks_suspended": sum(r.stopped for r in attacks),
        "rate_files_per_s": rate,
        "median_files_ruined_before_stop": round(statistics.median(ruined), 1) if ruined else None,
        "p95_files_ruined_before_stop": round(percentile(ruined, 0.95), 1) if ruined else None,
        "max_files_ruined_before_stop": max(ruined) if ruined else None,
        "styles_over_25_ruined": sum(1 for r in fast if r.ruined_runs and max(r.ruined_runs) > 25),
        "median_s_to_critical": round(statistics.median(secs), 3) if secs else None,
        "p95_s_to_critical": round(percentile(secs, 0.95), 3) if secs else None,
        "benign_jobs": len(benign),
        "benign_warnings": sum(r.warnings for r in benign),
        "benign_criticals": sum(r.criticals for r in benign),
        "benign_jobs_over_one_warning": sum(r.warnings > 1 for r in benign),
        "benign_warnings_by_night": [sum(n[i] for n in nights) for i in range(3)] if nights else [],
        "benign_jobs_warning_after_night_1": sum(1 for n in nights if sum(n[1:])),
    }


TRIPWIRE_STYLES = ("encrypt-inplace", "encrypt-medusa", "encrypt-copy-stem", "encrypt-copy-b64")


def tripwire_rows(
    work: Path, files: int, rate: float, repeat: int, timeout_s: float
) -> list[dict[str, Any]]:
    """The tripwire alone: an agent enforcing it, its collector unreachable (a closed
    loopback port); per style, the files ruined before the attack's tree was stopped."""
    rng = random.Random(7)
    rows = []
    for style in TRIPWIRE_STYLES:
        ruined: list[int | None] = []
        for attempt in range(repeat):
            tmp = work / f"tripwire-{style}-{attempt}"
            share, progress, log = tmp / "share", tmp / "progress.log", tmp / AGENT_LOG
            make_share(share, files=files, seed=11)
            closed_port = "127.0.0.1:9"
            agent = start_agent(closed_port, share, "tripwire-alone", tmp, "--tripwire", "enforce")
            workload = None
            try:
                if not wait_for(lambda log=log: "watching" in log.read_text("latin-1"), 30):
                    raise SystemExit("eval: the tripwire's agent did not start\n" + log.read_text())
                time.sleep(1.5 + rng.random())  # not the agent's first window; a random phase
                workload = launch(style, share, rate, progress, None)
                stopped = until_stopped(workload, timeout_s)
                ruined.append(len(progress_times(progress)) if stopped else None)
            finally:
                if workload is not None:
                    kill_tree(workload.pid)
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=15)
        row = {"style": style, "ruined_runs": ruined, "stopped": None not in ruined}
        rows.append(row)
        print(f"tripwire-alone {json.dumps(row)}", flush=True)
    return rows


def render_tripwire(rows: list[dict[str, Any]], rate: float) -> list[str]:
    out = [
        "",
        "## The tripwire alone (collector unreachable)",
        "",
        f"The same share and agent, `--tripwire enforce`, its collector a closed loopback port; "
        f"each style at {rate:g} files/s. **ruined before stop**: files the attack had finished "
        "when its process tree was stopped by the agent's own tripwire, one figure per run.",
        "",
        "| style | stopped every run | ruined before stop (runs) | median / max |",
        "|---|---|---|---|",
    ]
    every: list[int] = []
    for r in rows:
        runs = [n for n in r["ruined_runs"] if n is not None]
        every += runs
        figures = " / ".join(_fmt(n) for n in r["ruined_runs"])
        med = f"{statistics.median(runs):g} / {max(runs)}" if runs else "-"
        out.append(f"| {r['style']} | {_fmt(r['stopped'])} | {figures} | {med} |")
    if every:
        out += [
            "",
            f"Files ruined with the tripwire alone: median **{statistics.median(every):g}**, "
            f"maximum **{max(every)}**; runs not stopped: "
            f"**{sum(n is None for r in rows for n in r['ruined_runs'])}**.",
        ]
    return [*out, ""]


def smb_rows(work: Path) -> tuple[list[dict[str, Any]], str]:
    """One attack over the share per style (see module doc): (figures, why not run)."""
    from netns import netns_unavailable_reason
    from sambaserver import STYLES, samba_missing, smb_attack, smb_town

    why = netns_unavailable_reason() or samba_missing()
    if why:
        return [], why
    rows = []
    for style in STYLES:
        tmp = work / f"smb-{style}"
        tmp.mkdir(parents=True, exist_ok=True)
        with smb_town(tmp) as town:
            r = smb_attack(town, style)
        figures = r.figures()
        figures["cut"] = r.worker_stopped and r.client_blocked and not r.host_isolated
        rows.append(figures)
        print(f"smb {json.dumps(figures)}", flush=True)
    return rows, ""


def render_smb(rows: list[dict[str, Any]], why_not: str) -> list[str]:
    out = ["", "## Over the share (SMB 3, real Samba)", ""]
    if why_not:
        return [*out, f"Not run: {why_not}.", ""]
    out += [
        "A workstation encrypts the share through Samba at full speed while a colleague saves "
        "a letter every 0.5 s from another workstation (four network namespaces: file server "
        "with smbd and the agent, tripwire enforce; collector; attacker; colleague). **cut**: "
        "the attacker's smbd worker stopped and its address blocked, the server not isolated. "
        "Saves: from the first ruined file to the release.",
        "",
        "| style | s to critical | ruined before stop | cut | colleague saves ok "
        "| failed | ok after release |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in rows:
        out.append(
            f"| {f['style']} | {_fmt(f['seconds_first_ruined_to_critical_webhook'])} "
            f"| {f['files_ruined_before_stop']} | {_fmt(f['cut'])} | {f['colleague_saves_ok']} "
            f"| {f['colleague_saves_failed']} | {f['colleague_saves_ok_after_release']} |"
        )
    ruined = [float(f["files_ruined_before_stop"]) for f in rows]
    out += [
        "",
        f"Files ruined over SMB: median **{statistics.median(ruined):g}**, "
        f"maximum **{max(ruined):g}**.",
        "",
    ]
    return out


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def render(
    rows: list[Row],
    summ: dict[str, Any],
    args: argparse.Namespace,
    took_s: float,
    smb: tuple[list[dict[str, Any]], str] = ([], "not asked (--no-smb)"),
    load: tuple[float, float] = (0.0, 0.0),
    tripwire: list[dict[str, Any]] | None = None,
) -> str:
    lines = [
        "# Evaluation",
        "",
        "Written by `make eval` (`tools/eval.py`); do not edit by hand.",
        "",
        f"Every workload below ran as its own process on a fresh scratch share of {args.files} "
        "typed files, watched by a real `tocsin-agent` (tripwire at its shipped default, "
        "`follow`: enforcing, as the collector responds in enforce mode) streaming to one real "
        "`tocsin-collector` (`--respond enforce`, shipped model) over gRPC on 127.0.0.1, with "
        "a webhook receiver on 127.0.0.1. Attacks ran at "
        f"{args.rate:g} files/s unless the row says otherwise. Workloads run as drills (the "
        "agent's drill key in their environment), so they are suspended for real but "
        "never isolates; the judgement is the same. The evasions (`encrypt-as-sshd`, "
        "`encrypt-drill-marker`, `evade-non-utf8-name`, `evade-fifo-document`) must be "
        "stopped like the plain attack; the forged drill is "
        "isolated too (the suite runs in a network namespace of its own).",
        "",
        "- **seconds to critical**: from the first ruined file (the workload's progress log) "
        "to the receipt of the critical webhook.",
        "- **ruined before stop**: files the workload had finished when its process tree's "
        "state became stopped (SIGSTOP by the agent's tripwire or the collector's command).",
        "- **warnings / criticals**: alerts posted for the host (one per incident, plus one "
        "when it escalates).",
        f"- attacks: each style ran {args.repeat} times, each on a fresh share and host id; "
        "**ruined before stop** is the median / maximum of the runs, the other columns are "
        "the median run's (seconds to critical: the median).",
        "- benign jobs: **warnings per night** are the warnings of night 1 (the live run, "
        "its agent recording what it sent) and of nights 2 and 3 (that recording replayed "
        "into the same collector under the same host id, shifted by one and two days, "
        "`tocsin replay --speed 0 --keep-dates`, the collector allowing three days of clock "
        "skew): the same job at the same hour on three nights.",
        "",
        "| workload | what | kind | files/s | detected | s to critical "
        "| ruined before stop (median / max) | files done | warnings per night | criticals "
        "| isolate | first reasons |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reasons = ", ".join(r.reasons[:4]) + (" ..." if len(r.reasons) > 4 else "")
        if r.note:
            reasons = f"{r.note}; {reasons}"
        ruined = (
            f"{statistics.median(r.ruined_runs):g} / {max(r.ruined_runs)}"
            if r.ruined_runs
            else _fmt(r.ruined_before_stop)
        )
        warnings = " / ".join(map(str, r.warnings_by_night)) or str(r.warnings)
        lines.append(
            f"| {r.name} | {DESCRIPTIONS.get(r.name, '')} | {r.kind} | {r.rate_per_s:g} | "
            f"{_fmt(r.detected) if r.kind == 'attack' else '-'} | {_fmt(r.seconds_to_critical)} "
            f"| {ruined} | {r.files_done} | {warnings} | {r.criticals} "
            f"| {r.isolate or '-'} | {reasons.replace('|', '/')} |"
        )
    s = summ
    lines += [
        "",
        "## Totals",
        "",
        f"- attacks detected (critical): **{s['attacks_detected']} / {s['attacks']}**; "
        f"suspended: {s['attacks_suspended']} / {s['attacks']}",
        f"- attacks at {s['rate_files_per_s']:g} files/s, files ruined before suspension: "
        f"median **{_fmt(s['median_files_ruined_before_stop'])}**, "
        f"p95 **{_fmt(s['p95_files_ruined_before_stop'])}**, "
        f"maximum **{_fmt(s['max_files_ruined_before_stop'])}** (all runs of all styles); "
        f"styles with a run over 25: **{s['styles_over_25_ruined']}**",
        f"- attacks at {s['rate_files_per_s']:g} files/s, seconds from first ruined file to "
        f"critical webhook: median **{_fmt(s['median_s_to_critical'])}**, "
        f"p95 **{_fmt(s['p95_s_to_critical'])}**",
        f"- benign jobs: {s['benign_jobs']}; false criticals **{s['benign_criticals']}**, "
        f"false warnings on night 1 **{s['benign_warnings']}** (jobs with more than one "
        f"warning: {s['benign_jobs_over_one_warning']})",
        "- benign warnings per night (nights 1 / 2 / 3): **"
        + " / ".join(map(str, s["benign_warnings_by_night"]))
        + f"**; jobs that warned again after their first night: "
        f"**{s['benign_jobs_warning_after_night_1']}**",
        f"- suite wall time: {took_s:.0f} s; machine load (1-minute average, `os.getloadavg`) "
        f"at its start and end: {load[0]:.1f} and {load[1]:.1f} on {os.cpu_count()} CPUs "
        "(timings and files ruined grow with the load: compare runs at a similar load)",
        *(render_tripwire(tripwire, args.rate) if tripwire else []),
        *render_smb(*smb),
        "## Reproduce",
        "",
        "```",
        "make eval            # = .venv/bin/python tools/eval.py",
        f"python tools/eval.py --rate {args.rate:g} --files {args.files} "
        f"--repeat {args.repeat} [WORKLOAD ...]",
        "```",
        "",
        "Needs root for the agent's fanotify attribution (without it the agent falls back to "
        "psutil and attribution is slower). Workloads are `python -m tocsin.agent.simulate run "
        "STYLE DIR`; their list is in `agent/simulate.py`.",
        "",
    ]
    return "\n".join(lines)


def update_card(card_path: Path, summ: dict[str, Any]) -> None:
    """Put the totals into the card's ``evaluation.end_to_end`` (arrays untouched)."""
    card = json.loads(card_path.read_text())
    evaluation = card.get("evaluation") or {}
    evaluation["end_to_end"] = {
        "source": "make eval (tools/eval.py), table in docs/evaluation.md",
        **summ,
    }
    card["evaluation"] = evaluation
    card_path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")


def in_own_netns() -> None:
    """As root, re-run this suite in a new network namespace (loopback only), once."""
    if os.geteuid() != 0 or os.environ.get("TOCSIN_EVAL_NETNS") or not shutil.which("unshare"):
        return
    os.environ["TOCSIN_EVAL_NETNS"] = "1"
    script = 'ip link set lo up && exec "$0" "$@"'
    os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c", script, sys.executable, *sys.argv])


def main() -> int:
    in_own_netns()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evaluation.md")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each attack style")
    parser.add_argument("--settle-s", type=float, default=1.5)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--no-card", action="store_true", help="leave models/baseline.json alone")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, db)")
    parser.add_argument("--no-smb", action="store_true", help="skip the attacks over SMB")
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    names = args.names or [*DEFAULT_ATTACKS, *DEFAULT_BENIGN]
    for name in names:
        if name not in ATTACKS and name not in BENIGN:
            raise SystemExit(f"eval: unknown workload {name!r}")
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tocsin-eval-")))
        hooks = stack.enter_context(WebhookReceiver())
        suite = Suite(work, hooks, args.files, args.settle_s)
        suite.start_collector()
        try:
            for name in names:
                timeout = 120.0 if name == "encrypt-slow" else args.timeout_s
                repeat = args.repeat if name in ATTACKS and name != "encrypt-slow" else 1
                runs = [suite.run(name, args.rate, timeout, attempt) for attempt in range(repeat)]
                row = merge_runs(runs) if name in ATTACKS else runs[0]
                rows.append(row)
                print(
                    f"{name:18s} {row.kind:6s} detected={_fmt(row.detected):3s} "
                    f"s_to_critical={_fmt(row.seconds_to_critical):6s} "
                    f"ruined={row.ruined_runs or _fmt(row.ruined_before_stop)} "
                    f"done={row.files_done:4d} warn={row.warnings_by_night or row.warnings} "
                    f"crit={row.criticals} isolate={row.isolate or '-'} {row.note}",
                    flush=True,
                )
        finally:
            suite.stop()
        tripwire = (
            []
            if args.names
            else tripwire_rows(work, args.files, args.rate, args.repeat, args.timeout_s)
        )
        smb = ([], "not asked (--no-smb)") if args.no_smb else smb_rows(work)
    took = time.monotonic() - started
    load = (load_start, os.getloadavg()[0])
    summ = summary(rows, args.rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, summ, args, took, smb, load, tripwire))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "summary": summ,
                    "tripwire_alone": tripwire,
                    "smb": smb[0],
                }
            )
        )
    if not args.no_card and not args.names:
        update_card(ROOT / "models" / "baseline.json", summ)
    print(json.dumps(summ))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
