"""The dashboard tests' browser: Debian's `chromium` driven by Playwright, headless.

No `playwright install` (it downloads browsers): the system's chromium is launched by path,
and a missing one fails the tests with the apt line that installs it. Every page records
its console errors and uncaught exceptions, which the tests assert are none.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module. Not per session: Playwright's sync API runs an asyncio
    loop in this thread while it is open, and later tests calling asyncio.run() would fail."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not on PATH: apt-get install -y chromium (scripts/bootstrap)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


class Watched:
    """A page and what went wrong in it: console errors and uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(15_000)
    yield Watched(context.new_page())
    context.close()
