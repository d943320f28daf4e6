"""Debian's Chromium, headless, driven by Playwright for Python (no browser download)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, async_playwright

CHROMIUM = os.environ.get("TOCSIN_CHROMIUM", "/usr/bin/chromium")
# Closed network: no background fetches, no component updates, no sync.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not shutil.which(CHROMIUM):
        return f"needs Chromium at {CHROMIUM} (Debian package chromium)"
    return None


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()
