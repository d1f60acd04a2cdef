"""The pages in a real browser: Debian's Chromium driven headless by Playwright, against the
stack `make run` starts (Valkey, a Kafka broker, the mappings, IngestFunction, the gateway).

Without Chromium the suite is skipped, and fails in CI (CACHESYNC_REQUIRE_ALL_SERVERS=1)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.localrun import LocalRun
from harness.browser import chromium, chromium_path
from tests.unavailable import unavailable


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package is not installed (make dev)"
    if missing is None and chromium_path() is None:
        missing = "Chromium is not installed (apt-get install -y chromium)"
    if missing is not None:
        unavailable(missing)
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def run() -> Iterator[LocalRun]:
    # no live stream: what the tests compare stays put unless a test produces it
    local = LocalRun(port=0, rate=0, orders=100, movements=300).start()
    yield local
    local.stop()


class Page:
    """A fresh browser context and page, with what the page logged as errors."""

    def __init__(self, browser: Any, base: str):
        self.context = browser.new_context(viewport={"width": 1100, "height": 900})
        self.page = self.context.new_page()
        self.base = base
        self.console_errors: list[str] = []
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))

    def open(self, path: str) -> Any:
        self.page.goto(self.base + path)
        return self.page


@pytest.fixture
def page(browser: Any, run: LocalRun) -> Iterator[Page]:
    opened = Page(browser, run.url)
    yield opened
    opened.context.close()


def api_json(run: LocalRun, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(run.url + path, headers=headers), timeout=10) as answer:
        return json.loads(answer.read())


def api_status(run: LocalRun, path: str) -> int:
    try:
        with urllib.request.urlopen(run.url + path, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
