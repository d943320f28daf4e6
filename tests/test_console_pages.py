"""What each console page shows, from a real collector fed recorded fixtures over mTLS.

Fleet (every column, sorting, filtering), incident (the chart with its bars, score, threshold
and action marks; who wrote; example files; reasons as sentences; actions and outcomes; the
four buttons and what each confirmation says), host (24 hourly bars with the alerts marked),
the lists' paging, and the console being off unless configured.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transport_procs import CollectorProc, free_port

from console_harness import FIXTURES, ConsoleClient, ConsoleCollector, edited
from tocsin.collector.store import SqliteStore

BIN = Path(sys.executable).parent
# Named, replayed and versioned so that no two sort orders agree: by name QUIET, ATTACKED,
# BUSY; by last window the latest replayed first; by state the open incidents first; by
# version 0.1.0 < 0.9.0 < 0.10.0.
QUIET, ATTACKED, BUSY = "mairie-a-quiet", "mairie-b-fs", "mairie-c-backup"
VERSIONS = {QUIET: "0.9.0", BUSY: "0.10.0"}
ORANGE = 'stroke="#e67e22"'
GREY, RED = "#9aa5b1", "#c0392b"  # files written, files destroyed


def _chart(page: str) -> tuple[str, dict[str, list[float]], list[str]]:
    """A page's chart: its SVG, its bars' heights by colour (not the legend's squares) and the
    labels of its marks."""
    svg = re.search(r'<svg class="chart".*?</svg>', page, re.S)
    assert svg, page
    chart = svg.group(0)
    bars: dict[str, list[float]] = {GREY: [], RED: []}
    for height, colour in re.findall(
        rf'width="\d+\.\d" height="([\d.]+)" fill="({GREY}|{RED})"', chart
    ):
        bars[colour].append(float(height))
    return chart, bars, re.findall(r'fill="#a04000"[^>]*>([^<]+)</text>', chart)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleCollector]:
    with ConsoleCollector(tmp_path_factory.mktemp("pages"), hosts=(QUIET, BUSY, ATTACKED)) as c:
        c.replay(FIXTURES / "encrypt-inplace.jsonl", ATTACKED)
        for host, fixture in ((BUSY, "backup-targz.jsonl"), (QUIET, "photo-import.jsonl")):

            def version(msg: Any, v: str = VERSIONS[host]) -> None:
                if msg.HasField("hello"):
                    msg.hello.agent_version = v

            c.replay(edited(FIXTURES / fixture, c.tmp / fixture, version), host)
        yield c


@pytest.fixture
def client(console: ConsoleCollector) -> ConsoleClient:
    b = ConsoleClient(console)
    b.sign_in(console)
    return b


def _fleet_order(client: ConsoleClient, query: str) -> list[str]:
    status, page = client.request("GET", "/" + query)
    assert status == 200
    table = page[page.index('id="fleet"') :]
    return re.findall(r'<td data-label="Server"><a href="/hosts/([^"]+)"', table)


def test_the_fleet_shows_every_column_sorts_and_filters(client: ConsoleClient) -> None:
    _, page = client.request("GET", "/")
    row = re.search(rf'<tr class="hot">.*?/hosts/{ATTACKED}".*?</tr>', page, re.S)
    assert row, page  # the critical incident's row stands out
    cells = row.group(0)
    for shown in ("disconnected", "open incident", "critical", "0.1.0", ">off<"):
        assert shown in cells, shown
    assert re.search(r'data-label="Last window">\w{3} \d+, \d{4}', cells)
    for sort in ("host", "state", "seen", "version"):
        assert f'href="?sort={sort}&amp;q=' in page

    assert _fleet_order(client, "?sort=host") == [QUIET, ATTACKED, BUSY]
    assert _fleet_order(client, "?sort=seen") == [QUIET, BUSY, ATTACKED]
    assert _fleet_order(client, "?sort=state") == [ATTACKED, BUSY, QUIET]
    assert _fleet_order(client, "?sort=version") == [ATTACKED, QUIET, BUSY]
    assert _fleet_order(client, "?q=BACKUP") == [BUSY]
    assert _fleet_order(client, "?q=nothing-like-it") == []


def test_an_incident_page_shows_the_chart_who_what_and_the_buttons(
    console: ConsoleCollector, client: ConsoleClient
) -> None:
    _, page = client.request("GET", f"/incidents/{console.incident_of(client, ATTACKED)}")
    chart, bars, marks = _chart(page)
    assert max(bars[GREY]) > 0 and max(bars[RED]) > 0
    assert 'stroke-dasharray="6 4"' in chart and "<polyline" in chart  # threshold, score
    assert chart.count(ORANGE) >= 2  # one line per action
    assert {"suspend", "isolate"} <= set(marks), marks

    main = page[page.index('<main id="main">') :]
    assert "no longer do" in main  # a reason as a sentence
    assert re.search(r"python \(pid \d+\)", main)  # the process
    assert re.search(r"<li><code>/\S+\.(docx|xlsx|pdf|jpg|txt)</code></li>", main)  # examples
    outcomes = re.findall(
        r'data-label="Action">(\w+).*?data-label="Outcome"><span[^>]*>(\w+)', main, re.S
    )
    assert ("suspend", "sent") in outcomes and ("isolate", "sent") in outcomes, outcomes
    for what in ("release", "resume", "kill", "isolate"):
        assert f'href="/hosts/{ATTACKED}/confirm?what={what}"' in main, what


@pytest.mark.parametrize(
    ("what", "says"),
    [
        ("release", "Processes tocsin stopped stay stopped."),
        ("resume", "let the processes it stopped run again ("),
        ("kill", "kill the processes it stopped ("),
        ("isolate", "cut mairie-b-fs off the network"),
    ],
)
def test_each_confirmation_says_what_will_happen(
    client: ConsoleClient, what: str, says: str
) -> None:
    status, page = client.request("GET", f"/hosts/{ATTACKED}/confirm?what={what}")
    assert status == 200 and says in page, page
    form = re.search(r'<form method="post" action="/hosts/([^"]+)/act">(.*?)</form>', page, re.S)
    assert form and form.group(1) == ATTACKED
    assert f'name="what" value="{what}"' in form.group(2) and 'name="csrf"' in form.group(2)


def test_a_host_page_shows_24_hourly_bars_with_its_alerts_marked(
    console: ConsoleCollector, client: ConsoleClient
) -> None:
    _, page = client.request("GET", f"/hosts/{ATTACKED}")
    chart, bars, marks = _chart(page)
    hours = re.findall(r">(\d\d)h</text>", chart)
    assert len(hours) == 8 and len({int(h) for h in hours}) == 8  # every 3 h over 24 h
    # This hour's files written and destroyed, as the store's hourly rollup adds them up.
    store = SqliteStore.open(console.tmp / "c.db")
    try:
        (hour,) = store.rollups(ATTACKED, time.time() - 86400, time.time() + 3600)
    finally:
        store.close()
    written, destroyed = hour.tally.files_written, hour.tally.files_destroyed
    assert 0 < destroyed <= written
    assert re.search(rf'font-size="11">{max(written, destroyed)}</text>', chart)  # the top
    ((grey,), (red,)) = bars[GREY], bars[RED]
    assert red / grey == pytest.approx(destroyed / written, abs=0.01)
    assert marks == ["critical"]
    assert "/incidents/" in page[page.index("</svg>") :]


def test_the_lists_page_fifty_at_a_time(console: ConsoleCollector, client: ConsoleClient) -> None:
    store = SqliteStore.open(console.tmp / "c.db")
    try:
        for n in range(120):
            store.audit("operator:paging", f"entry {n:03d}", "")
    finally:
        store.close()
    pages: list[list[str]] = []
    while len(pages) < 10:  # "Older" until the last page
        number = len(pages) + 1
        _, page = client.request("GET", f"/audit?page={number}")
        pages.append(re.findall(r">entry (\d{3})<", page))
        assert ('href="?page=' + str(number - 1) + '"' in page) == (number > 1), number
        if 'href="?page=' + str(number + 1) + '"' not in page:
            break
    assert [len(found) for found in pages[:3]] == [50, 50, 20]
    assert 3 <= len(pages) < 10 and not any(pages[3:])  # then the rows from before
    entries = [int(n) for found in pages for n in found]
    assert entries[:50] == list(range(119, 69, -1))  # newest first
    assert sorted(entries) == list(range(120))  # none lost, none twice
    for kind in ("alerts", "actions"):
        status, page = client.request("GET", f"/{kind}?page=1")
        assert status == 200 and ATTACKED in page and "Page 1" in page


def test_the_console_is_off_unless_configured(tmp_path: Path) -> None:
    proc = CollectorProc(
        tmp_path / "c.db", tmp_path / "c.log", f"127.0.0.1:{free_port()}", ["--insecure"]
    )
    listen = proc.start()
    try:
        res = subprocess.run(
            [str(BIN / "tocsin"), "console", "login", "--collector", listen, "--insecure"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        proc.stop()
    assert res.returncode != 0 and "serves no console" in res.stderr, res
    assert "console on" not in (tmp_path / "c.log").read_text()

    conf = tmp_path / "open.toml"
    conf.write_text('console = "0.0.0.0:0"\n', encoding="utf-8")
    res = subprocess.run(
        [
            *(str(BIN / "tocsin-collector"), "--insecure", "--listen", "127.0.0.1:0"),
            *("--db", str(tmp_path / "d.db"), "--config", str(conf)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2, res
    assert res.stderr.strip().count("\n") == 0 and "loopback only" in res.stderr, res.stderr


def test_an_attack_over_the_share_names_the_workstation_and_its_user(tmp_path: Path) -> None:
    """An incident whose writer is a Samba worker shows the client's address and SMB user
    (what the town blocks at its switch or disables), not only the smbd process."""
    host = "mairie-d-share"

    def over_smb(msg: Any) -> None:
        if msg.HasField("window"):
            for p in msg.window.top_writers:
                p.name, p.exe = "smbd", "/usr/sbin/smbd"
                p.smb_client_addr, p.smb_user = "192.0.2.41", "MAIRIE\\compta"

    with ConsoleCollector(tmp_path, hosts=(host,)) as c:
        c.replay(edited(FIXTURES / "encrypt-inplace.jsonl", tmp_path / "smb.jsonl", over_smb), host)
        client = ConsoleClient(c)
        client.sign_in(c)
        _, page = client.request("GET", f"/incidents/{c.incident_of(client, host)}")
    main = page[page.index('<main id="main">') :]
    assert re.search(r"<dt>Workstation</dt><dd>192\.0\.2\.41</dd>", main), main
    assert re.search(r"<dt>Share user</dt><dd>MAIRIE\\compta</dd>", main), main
