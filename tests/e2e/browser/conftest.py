"""Playwright fixtures: a real Chromium from Debian (``apt-get install chromium``), never
a browser that Playwright downloads.

``PIPEGATE_CHROMIUM`` overrides the executable (default: ``chromium`` on ``PATH``).
Screenshots a test takes with :func:`screenshot` land in ``artifacts/browser/`` at the
repository root (ignored by git, kept by CI as test artifacts).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "browser"


def _chromium() -> str:
    explicit = os.environ.get("PIPEGATE_CHROMIUM")
    found = explicit or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(
            "no chromium on PATH: install Debian's package (`apt-get install -y chromium`, "
            "as .ci/run does) or set PIPEGATE_CHROMIUM to its executable",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Playwright]:
    """Module-scoped, not session-scoped: Playwright's sync API keeps an asyncio loop
    running in this thread while it lives, and every pytest-asyncio test collected
    after it (``conformance/tests``) would fail with "Runner.run() cannot be called
    from a running event loop"."""
    # Playwright must never fetch a browser of its own.
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="module")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    launched = playwright_instance.chromium.launch(
        executable_path=_chromium(),
        headless=True,
        # *.localhost resolves to loopback inside Chromium itself (no DNS, no /etc/hosts).
        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    )
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    fresh = browser.new_context()
    fresh.set_default_timeout(15_000)
    try:
        yield fresh
    finally:
        fresh.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def screenshot(page: Page, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``screenshot("step")`` saves the page as ``artifacts/browser/<test>-<step>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def take(step: str) -> Path:
        path = ARTIFACTS / f"{stem}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
