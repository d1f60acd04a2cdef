"""Debian's Chromium, driven headless by Playwright, for the page tests and the screenshots.

Never a browser download: Playwright's own builds cannot be fetched here, so it
drives the system's `chromium` (`apt-get install chromium`; `.ci/run` installs it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    """The system Chromium (CHROMIUM overrides), or None when there is none."""
    given = os.environ.get("CHROMIUM")
    if given:
        return given
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright's sync API); raises when there is no Chromium."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium: apt-get install -y chromium")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium refuses its sandbox
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def first_contentful_paint_ms(page: Any) -> float | None:
    """The page's first contentful paint, as the browser's Performance API reports it."""
    value = page.evaluate(
        "() => { const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null; }"
    )
    return None if value is None else float(value)
