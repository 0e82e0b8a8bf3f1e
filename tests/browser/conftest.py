"""Fixtures for the real-browser tests: a ``launch.py --demo`` server subprocess and Debian's Chromium.

The tests drive the page exactly as a user does (upload, type, click) through Playwright for Python. Browsers
cannot be downloaded here (``playwright install``), so Playwright drives ``/usr/bin/chromium`` (``apt-get install
chromium``). Without it, or without playwright, the tests are skipped with the reason -- unless
``FRAMEPACK_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which turns the skip into a failure so CI cannot pass
without running them.

Screenshots of the key moments go to ``test-artifacts/`` at the repository root (gitignored).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.ui_latency import CHROMIUM, DemoServer, launch_chromium, start_demo_server

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the app in a real Chromium (run by default; "
                                       "deselect with -m 'not browser')")


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("FRAMEPACK_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required but cannot run: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def demo_server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """One ``launch.py --demo`` for the whole browser suite (it starts in about 8 s)."""
    work = tmp_path_factory.mktemp("demo-server")
    with start_demo_server(work, models_dir=tiny_models_dir) as server:
        yield server


@pytest.fixture
def page(chromium: Any, demo_server: DemoServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (own cookies and local storage) on the demo server's page."""
    with open_page(chromium, demo_server.url) as page:
        yield page
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            screenshot(page, f"FAILED-{request.node.name}")


@contextlib.contextmanager
def open_page(chromium: Any, url: str, width: int = 1400, height: int = 1100) -> Iterator[Any]:
    """The app's page at ``url`` in a fresh browser context of a ``width`` x ``height`` window, once Start is
    drawn; the context is closed after."""
    context = chromium.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    context.set_default_timeout(30_000)
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#start")
        yield page
    finally:
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def shoot() -> Any:
    """``shoot(page, name)``: a full-page screenshot of a key moment, kept in test-artifacts/."""
    return screenshot


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as test-artifacts/<name>.png and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
