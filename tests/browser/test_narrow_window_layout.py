"""Text that must stay readable in a 1366x768 window, the smallest common laptop screen: the latent preview's
label beside the video, and the System check table's long "found" and "fix" texts.

Screenshots of both go to test-artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.ui_latency import IMAGE, set_job_inputs, start_job, wait_for_state
from tests.browser.conftest import open_page, screenshot

pytestmark = pytest.mark.browser

# How the label sits in its box: its width, the lines its text takes, and whether the buttons lie over it.
LABEL_LAYOUT = """() => {
  const label = document.querySelector('#preview [data-testid="block-label"]');
  const range = document.createRange();
  // The text itself, not the icon beside it: one client rect per line the text is broken into.
  range.selectNodeContents([...label.childNodes].filter(n => n.nodeType === 3 && n.textContent.trim()).pop());
  const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
  const text = label.getBoundingClientRect();
  const overlapping = [...document.querySelectorAll('#preview .icon-button-wrapper button')]
    .map(b => b.getBoundingClientRect())
    .filter(b => b.width > 0 && b.left < text.right && b.right > text.left && b.top < text.bottom
                 && b.bottom > text.top).length;
  return {text: label.innerText.trim(), scrollWidth: label.scrollWidth, clientWidth: label.clientWidth,
          lines: lines, buttonsOverLabel: overlapping};
}"""

# Where the table's right edge lies against its box and the window, and whether anything scrolls sideways.
TABLE_LAYOUT = """() => {
  const block = document.querySelector('#system-check-table');
  const table = block.querySelector('table').getBoundingClientRect();
  const viewport = block.querySelector('.virtual-table-viewport');
  const fix = [...block.querySelectorAll('th')].find(th => th.innerText.trim() === 'fix').getBoundingClientRect();
  return {tableRight: table.right, blockRight: block.getBoundingClientRect().right, fixRight: fix.right,
          windowWidth: window.innerWidth, innerOverflow: viewport.scrollWidth - viewport.clientWidth,
          pageOverflow: document.documentElement.scrollWidth - document.documentElement.clientWidth};
}"""


@pytest.fixture
def laptop_page(chromium: Any, demo_server: Any) -> Iterator[Any]:
    with open_page(chromium, demo_server.url, 1366, 768) as page:
        yield page


def test_the_latent_previews_label_is_whole_on_one_line_clear_of_its_buttons_at_1366(laptop_page):
    page = laptop_page
    set_job_inputs(page, image=IMAGE, prompt="preview label at 1366", seconds=20, steps=3, window=3, resolution=64,
                   seed=5)
    start_job(page)
    try:
        page.locator("#preview img").wait_for(state="visible")
        layout = page.evaluate(LABEL_LAYOUT)
        screenshot(page, "narrow-preview-label-1366x768")
    finally:
        page.click("#stop")
        wait_for_state(page, ("cancelled", "finished", "failed"), timeout_s=30)
    assert layout["scrollWidth"] <= layout["clientWidth"], layout
    assert layout["lines"] == 1, layout
    assert layout["buttonsOverLabel"] == 0, layout
    assert layout["text"] == "Latent preview"


def test_the_system_check_table_wraps_its_texts_inside_the_window_at_1366(laptop_page):
    page = laptop_page
    page.get_by_role("tab", name="Models").click()
    page.click("#system-check button.label-wrap")
    page.click("#system-check-run")
    page.wait_for_function("() => document.querySelector('#system-check-table').innerText.includes('Output folder')")
    layout = page.evaluate(TABLE_LAYOUT)
    screenshot(page, "narrow-system-check-1366x768")
    assert layout["tableRight"] <= layout["blockRight"] + 0.5, layout
    assert layout["fixRight"] <= layout["windowWidth"], layout
    assert layout["innerOverflow"] <= 0, layout
    assert layout["pageOverflow"] <= 0, layout
