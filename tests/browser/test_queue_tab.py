"""The Queue tab in a real Chromium: jobs queued by another process show up, and can be cancelled, retried and
deleted from the page."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench.ui_latency import IMAGE
from framepack_core.jobs.queue import JobQueue, JobState
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.request import GenerationRequest

pytestmark = pytest.mark.browser

TINY = dict(latent_window_size=3, steps=3, resolution=64, use_teacache=False)


def _queue_text(page: Any) -> str:
    return page.locator("#queue-table").inner_text()


def _wait_for(page: Any, predicate, timeout_s: float = 20) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, _queue_text(page)
        page.wait_for_timeout(200)


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
        page.get_by_role("tab", name="Queue").click()
        _wait_for(page, lambda: waiting in _queue_text(page) and "running" in _queue_text(page))
        shoot(page, "10-queue-tab")
        assert "waiting its turn" in _queue_text(page)

        page.locator("#queue-table").get_by_text(waiting).click()
        _wait_for(page, lambda: page.locator("#queue-job textarea, #queue-job input").first.input_value() == waiting)
        page.click("#queue-cancel")
        _wait_for(page, lambda: f"Cancelled {waiting}" in page.locator("#queue-note").inner_text())
        assert queue.get(waiting).state == JobState.CANCELLED

        page.click("#queue-retry")
        _wait_for(page, lambda: "queued again" in page.locator("#queue-note").inner_text())
        assert queue.get(waiting).state == JobState.QUEUED

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
