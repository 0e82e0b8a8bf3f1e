"""The batch panel in a real Chromium at 1366x768: two images and two prompts say "4 jobs" before the button is
pressed, "Queue batch" queues them with the form's settings, and the Queue tab shows them as one group that
Cancel batch ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from bench.ui_latency import IMAGE
from framepack_core.jobs.queue import JobQueue, JobState, QueueError

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SECOND_IMAGE = REPO / "assets" / "coffee_landscape.jpg"


def _wait_for(page: Any, predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        page.wait_for_timeout(200)


def test_the_batch_panel_queues_a_batch_that_the_queue_tab_cancels_as_one(page, demo_server, shoot):
    queue = JobQueue.for_output_dir(Path(demo_server.output_dir))
    page.set_viewport_size({"width": 1366, "height": 768})
    page.locator("#seconds input[type=number]").fill("40")  # long enough to still run when it is cancelled
    page.locator("#seconds input[type=number]").press("Enter")
    page.locator("#batch-panel").get_by_text("Batch: several images, prompts and seeds").click()
    page.locator("#batch-images input[type=file]").set_input_files([str(IMAGE), str(SECOND_IMAGE)])
    page.locator("#batch-prompts textarea").fill("# the story\nthe cat stretches\nthe cat yawns")
    page.locator("#batch-seeds input, #batch-seeds textarea").first.fill("3")
    count = page.locator("#batch-count")
    _wait_for(page, lambda: "4 jobs" in count.inner_text(), f"the count: {count.inner_text()}")
    assert "2 images x 2 prompts x 1 seed" in count.inner_text()
    page.locator("#batch-queue").scroll_into_view_if_needed()
    shoot(page, "20-batch-panel")

    page.click("#batch-queue")
    note = page.locator("#batch-note")
    _wait_for(page, lambda: "Queued batch" in note.inner_text(), f"the note: {note.inner_text()}")
    batch_jobs = [job for job in queue.list() if job.batch_id]
    try:
        assert len(batch_jobs) == 4 and len({job.batch_id for job in batch_jobs}) == 1
        batch_id = batch_jobs[0].batch_id
        assert {job.spec.settings["seconds"] for job in batch_jobs} == {40.0}
        assert sorted(job.spec.settings["prompt"] for job in batch_jobs) == ["the cat stretches"] * 2 + \
            ["the cat yawns"] * 2
        assert {job.spec.settings["seed"] for job in batch_jobs} == {3}

        page.get_by_role("tab", name="Queue").click()
        groups = page.locator("#queue-batches")
        _wait_for(page, lambda: f"batch {batch_id}: 4 jobs" in groups.inner_text(), groups.inner_text())
        page.locator("#queue-table").get_by_text(batch_jobs[-1].id).click()
        shoot(page, "21-queue-tab-batch")
        page.click("#queue-cancel-batch")
        queue_note = page.locator("#queue-note")
        _wait_for(page, lambda: f"Cancelled batch {batch_id}" in queue_note.inner_text(), queue_note.inner_text())
        _wait_for(page, lambda: all(queue.get(job.id).state.done for job in batch_jobs), "every job ended", 60)
        assert {queue.get(job.id).state for job in batch_jobs} == {JobState.CANCELLED}
        _wait_for(page, lambda: "4 cancelled" in groups.inner_text(), groups.inner_text())
        shoot(page, "22-queue-tab-batch-cancelled")
    finally:
        for job in batch_jobs:
            with suppress(QueueError):  # already ended
                queue.cancel(job.id)
