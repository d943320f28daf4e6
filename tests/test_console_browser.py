"""The console in headless Chromium: sign in, fleet, incident, release, live update, French."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from browser import chromium, chromium_missing
from console_harness import FIXTURES, ConsoleCollector

ATTACKED, BUSY, LATE = "mairie-fs1", "mairie-fs2", "mairie-fs3"
PHONE = {"width": 390, "height": 844}
# No sideways scrolling: everything fits the screen's width.
FITS = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleCollector]:
    missing = chromium_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    with ConsoleCollector(tmp_path_factory.mktemp("browser"), hosts=(ATTACKED, BUSY, LATE)) as c:
        c.replay(FIXTURES / "encrypt-inplace.jsonl", ATTACKED)
        c.replay(FIXTURES / "backup-targz.jsonl", BUSY)
        yield c


def test_sign_in_see_an_incident_release_it_live_and_in_french(console: ConsoleCollector) -> None:
    async def go() -> None:
        async with chromium() as browser:
            ctx = await browser.new_context(ignore_https_errors=True)
            dialogs: list[str] = []
            page = await ctx.new_page()
            page.on("dialog", lambda d: dialogs.append(d.message))
            await page.goto(console.link())
            await page.click("#sign-in")
            await page.wait_for_selector("#fleet")
            fleet = await page.inner_text("#fleet")
            assert ATTACKED in fleet and BUSY in fleet and "open incident" in fleet

            await page.click(f"tr:has-text('{ATTACKED}') >> text=open incident")
            await page.wait_for_selector("svg.chart polyline", state="attached")
            body = await page.inner_text("main")
            assert f"Incident on {ATTACKED}" in body
            assert "no longer do" in body  # the reason, in a sentence
            assert "python" in await page.inner_text("#writers")  # who wrote, by tree
            assert "No action yet." not in body  # enforce: suspend and isolate were sent

            other = await ctx.new_page()
            await other.goto(page.url)
            await other.click("a.button[href$='confirm?what=release']")
            assert "Processes tocsin stopped stay stopped" in await other.inner_text("main")
            await other.click("#confirm")
            await other.wait_for_selector(".outcome")
            assert "queued" in await other.inner_text(".outcome")

            # The first page learns of the new action by itself.
            await page.wait_for_selector("#live:not([hidden])", timeout=10_000)
            assert "operator:alice" in await page.inner_text("main")

            await page.click("text=Français")
            await page.wait_for_selector(f"h1:has-text('Incident sur {ATTACKED}')")
            assert "Ce que tocsin a fait" in await page.inner_text("main")
            assert not dialogs
            await ctx.close()

    asyncio.run(go())


def test_on_a_phone_the_fleet_fits_sorts_filters_and_shows_a_new_attack_live(
    console: ConsoleCollector,
) -> None:
    async def go() -> None:
        async with chromium() as browser:
            ctx = await browser.new_context(ignore_https_errors=True, viewport=PHONE)
            page = await ctx.new_page()
            await page.goto(console.link())
            await page.click("#sign-in")
            await page.wait_for_selector("#fleet")
            assert await page.evaluate(FITS)
            # One card per server: the header row is hidden, each cell on its own line.
            assert not await page.is_visible("#fleet thead")
            cell = "#fleet td[data-label='Server']"
            assert await page.eval_on_selector(cell, "td => getComputedStyle(td).display") == (
                "block"
            )

            async def order() -> list[str]:
                return [t.strip().split()[0] for t in await page.locator(cell).all_inner_texts()]

            await page.select_option("#sort", "seen")
            await page.click(".filter button")
            await page.wait_for_url("**/?q=&sort=seen")
            assert await order() == [BUSY, ATTACKED]  # the backup was replayed last
            await page.select_option("#sort", "host")
            await page.click(".filter button")
            await page.wait_for_url("**/?q=&sort=host")
            assert await order() == [ATTACKED, BUSY]
            await page.fill("input[name=q]", "FS2")
            await page.click(".filter button")
            await page.wait_for_url("**/?q=FS2&sort=host")
            assert await order() == [BUSY]

            await page.goto(console.base_url + "/")
            # An attack on another server while the page is open: it appears by itself.
            await asyncio.to_thread(console.replay, FIXTURES / "encrypt-inplace.jsonl", LATE)
            await page.wait_for_selector("#live:not([hidden])", timeout=10_000)
            assert LATE in await page.inner_text("#fleet")
            await page.click(f"tr:has-text('{LATE}') >> text=open incident")
            await page.wait_for_selector("svg.chart")
            assert await page.evaluate(FITS)
            await ctx.close()

    asyncio.run(go())
