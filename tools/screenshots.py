"""`make screenshots`: every console page at desktop and phone width, into docs/console/.

Starts a real collector with its console (certificates from ``tocsin certs``),
replays two recorded fixtures into it (an attack and a backup), signs in with
a one-time link in Debian's headless Chromium, asks for a release, and saves
each page as PNG: fleet, incident, host, confirm, alerts, actions, audit, at
1280 and 390 pixels wide, plus the incident page in French.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser import chromium, chromium_missing  # noqa: E402
from console_harness import FIXTURES, ConsoleCollector  # noqa: E402

OUT = ROOT / "docs" / "console"
ATTACKED, BUSY = "mairie-fs1", "mairie-fs2"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


async def shoot(c: ConsoleCollector) -> list[Path]:
    saved = []
    async with chromium() as browser:
        for width_name, (w, h) in WIDTHS.items():
            ctx = await browser.new_context(
                ignore_https_errors=True, viewport={"width": w, "height": h}
            )
            page = await ctx.new_page()
            await page.goto(c.link())
            await page.click("#sign-in")
            await page.wait_for_selector("#fleet")
            incident = await page.get_attribute(
                f"tr:has-text('{ATTACKED}') >> a:has-text('open incident')", "href"
            )
            pages = {
                "fleet": "/",
                "incident": str(incident),
                "host": f"/hosts/{ATTACKED}",
                "confirm": f"/hosts/{ATTACKED}/confirm?what=release",
                "alerts": "/alerts",
                "actions": "/actions",
                "audit": "/audit",
            }
            for name, path in pages.items():
                await page.goto(c.base_url + path)
                await page.wait_for_load_state("networkidle")
                out = OUT / f"{name}-{width_name}.png"
                await page.screenshot(path=str(out), full_page=True)
                saved.append(out)
            await page.goto(c.base_url + str(incident))
            await page.click("text=Français")
            await page.wait_for_selector("h1:has-text('Incident sur')")
            out = OUT / f"incident-fr-{width_name}.png"
            await page.screenshot(path=str(out), full_page=True)
            saved.append(out)
            await ctx.close()
    return saved


def main() -> int:
    missing = chromium_missing()
    if missing:
        print(f"screenshots: {missing}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        ConsoleCollector(Path(tmp), hosts=(ATTACKED, BUSY)) as c,
    ):
        # In real time, so each window is dated when it arrives and the chart's action
        # marks fall where tocsin acted (at speed 0 the windows are dated ahead of them).
        c.replay(FIXTURES / "encrypt-inplace.jsonl", ATTACKED, speed=1)
        c.replay(FIXTURES / "backup-targz.jsonl", BUSY, speed=1)
        release = c.operator("release", ATTACKED, "--timeout", "1")
        print(release.stdout.strip() or release.stderr.strip())
        for path in asyncio.run(shoot(c)):
            print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
