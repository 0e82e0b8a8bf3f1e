"""The Queue tab in a real Chromium: jobs queued by another process show up, and can be cancelled, retried and
deleted from the page."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench.ui_latency import IMAGE, page_state
from framepack_core.jobs.queue import JobQueue, JobState
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.request import GenerationRequest

pytestmark = pytest.mark.browser

TINY = dict(latent_window_size=3, steps=3, resolution=64, cache="none")


def _queue_text(page: Any) -> str:
    return page.locator("#queue-table").inner_text()


def _wait_for(page: Any, predicate, timeout_s: float = 20) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, _queue_text(page)
        page.wait_for_timeout(200)


# What makes the table hard to read: a header broken inside its word ("sec/ond/s"), a submitted time over two
# lines, a column beyond the window's right edge.
TABLE_PROBLEMS_JS = """
() => {
  const lines = (element) => {
    const range = document.createRange();
    range.selectNodeContents(element);
    return new Set([...range.getClientRects()].map((rect) => Math.round(rect.top))).size;
  };
  const problems = [];
  const headers = [...document.querySelectorAll('#queue-table th[role=columnheader]')];
  for (const header of headers) {
    const text = header.querySelector('span.text') || header;
    if (lines(text) > 1) problems.push(`the "${header.title}" header is on ${lines(text)} lines`);
    if (header.getBoundingClientRect().right > window.innerWidth) problems.push(`"${header.title}" is off-screen`);
  }
  const submitted = headers.findIndex((header) => header.title === 'submitted');
  for (const cell of document.querySelectorAll(`#queue-table [role=gridcell][data-col="${submitted}"] span.text`)) {
    if (lines(cell) > 1) problems.push(`the submitted time ${cell.innerText} is on ${lines(cell)} lines`);
  }
  return headers.length ? problems : ['no table headers found'];
}
"""


def _table_problems(page: Any) -> list[str]:
    return page.evaluate(TABLE_PROBLEMS_JS)


def _cancel_is_red(page: Any) -> bool:
    return "stop" in (page.locator("#queue-cancel").get_attribute("class") or "").split()


def _followed_job(page: Any) -> str | None:
    return page.locator("#progress .fp-progress").get_attribute("data-job")


def test_the_queue_tab_shows_jobs_from_the_cli_and_cancels_retries_and_deletes_them(page, demo_server, shoot):
    queue = JobQueue.for_output_dir(Path(demo_server.output_dir))
    image = Path(IMAGE)

    def submit(seconds: float, prompt: str) -> str:
        spec = JobSpec.from_request(GenerationRequest(image=image, prompt=prompt, seconds=seconds, **TINY),
                                    file_sha256(image))
        return queue.submit(spec, image).id

    running = submit(40, "a long job from the CLI")
    waiting = submit(1, "waiting its turn")
    try:
        page.set_viewport_size({"width": 1366, "height": 768})
        page.get_by_role("tab", name="Queue").click()
        _wait_for(page, lambda: waiting in _queue_text(page) and "running" in _queue_text(page))
        page.locator("#queue-actions").scroll_into_view_if_needed()
        shoot(page, "10-queue-tab")
        assert "waiting its turn" in _queue_text(page)
        assert not _table_problems(page)
        assert not _cancel_is_red(page)  # nothing picked, nothing to cancel

        page.locator("#queue-table").get_by_text(waiting).click()
        _wait_for(page, lambda: page.locator("#queue-job textarea, #queue-job input").first.input_value() == waiting)
        _wait_for(page, lambda: _cancel_is_red(page) and _followed_job(page) == waiting)
        assert page_state(page) == "queued"  # the picked job is followed in the generate area
        for button in ("#queue-move", "#queue-cancel", "#queue-retry", "#queue-delete"):
            assert page.locator(button).bounding_box()["height"] <= 48, button
        page.click("#queue-cancel")
        _wait_for(page, lambda: f"Cancelled {waiting}" in page.locator("#queue-note").inner_text())
        assert queue.get(waiting).state == JobState.CANCELLED
        _wait_for(page, lambda: page_state(page) == "cancelled")

        page.click("#queue-retry")
        _wait_for(page, lambda: "queued again" in page.locator("#queue-note").inner_text())
        assert queue.get(waiting).state == JobState.QUEUED
        _wait_for(page, lambda: _followed_job(page) == waiting and page_state(page) == "queued")

        page.click("#queue-delete")
        _wait_for(page, lambda: f"Deleted {waiting}" in page.locator("#queue-note").inner_text())
        _wait_for(page, lambda: waiting not in _queue_text(page))
    finally:
        for job_id in (waiting, running):
            try:
                queue.cancel(job_id)
            except Exception:  # noqa: BLE001 - already ended or deleted
                pass
        deadline = time.monotonic() + 30
        while queue.list(states=(JobState.RUNNING, JobState.QUEUED)) and time.monotonic() < deadline:
            time.sleep(0.2)
