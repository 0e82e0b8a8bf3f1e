"""The estimate under Start, in a real Chromium against ``launch.py --demo``: it is there when the page opens, follows
the image and the settings, and warns above 640. Window screenshots at 1366x768 and 1920x1080 go to
test-artifacts/ (estimate-<size>.png) for a look at the layout."""

from __future__ import annotations

from typing import Any

import pytest

from bench.ui_latency import IMAGE, set_number
from tests.browser.conftest import ARTIFACTS

pytestmark = pytest.mark.browser

PANEL_TEXT = "() => document.querySelector('#estimate .fp-estimate')?.innerText ?? ''"


def _wait_for_panel(page: Any, says: str) -> str:
    page.wait_for_function(f"() => ({PANEL_TEXT})().includes({says!r})")
    return page.evaluate(PANEL_TEXT)


@pytest.mark.parametrize(("width", "height"), [(1366, 768), (1920, 1080)])
def test_the_estimate_under_start_follows_the_image_and_the_settings(chromium, demo_server, width, height):
    context = chromium.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(30_000)
    try:
        page = context.new_page()
        page.goto(demo_server.url)
        text = _wait_for_panel(page, "any start image")
        assert "Memory (fits)" in text and "(on the CPU)" in text and "Time:" in text
        start, panel = page.locator("#start").bounding_box(), page.locator("#estimate").bounding_box()
        assert panel["y"] >= start["y"] + start["height"] - 1  # under Start

        page.set_input_files("#start-image input[type=file]", str(IMAGE))
        text = _wait_for_panel(page, "video in")
        assert "160×96" in text  # the demo's base resolution 128, the landscape example's bucket
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"estimate-{width}x{height}.png"))

        page.locator("#advanced").click()
        set_number(page, "resolution", 768)
        text = _wait_for_panel(page, "above the 640")
        assert "expect worse quality" in text
        assert page.locator("#estimate .fp-error").is_visible()
    finally:
        context.close()
