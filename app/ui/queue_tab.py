"""The Queue tab: the jobs the viewer may see (the persistent queue's rows, kept across restarts), and moving,
cancelling, retrying and deleting them; a waiting or running job that is picked (or retried) is followed in the
generate area. Also keeps the worker's health note at the top of the page current."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from app.access import Viewer
from app.service.batches import batch_id_of, cancel_batch, summary_of
from app.ui.context import PageContext
from app.ui.generate_tab import follow_job
from app.ui.render import (
    JOB_ID_PATTERN,
    QUEUE_COLUMN_WIDTHS,
    QUEUE_COLUMNS,
    QUEUE_REFRESH_S,
    batches_markdown,
    health_markdown,
    queue_table_rows,
    workers_markdown,
)
from app.ui.streams import StreamFrame
from framepack_core.errors import FramePackError
from framepack_core.jobs.batch import batch_summaries


@dataclass
class QueueTab:
    table: gr.Dataframe
    job: gr.Textbox
    place: gr.Number
    move: gr.Button
    cancel: gr.Button
    retry: gr.Button
    delete: gr.Button
    note: gr.Markdown
    timer: gr.Timer
    batches: gr.Markdown | None = None  # the viewer's batches as groups
    cancel_batch: gr.Button | None = None  # cancels the picked job's whole batch


def build_queue_tab(logins_on: bool) -> QueueTab:
    """The tab, laid out in the current Blocks. With logins on, a place counts among the viewer's own jobs."""
    with gr.Tab("Queue", elem_id="queue-tab"):
        batches = gr.Markdown("", elem_id="queue-batches")
        # Empty in the page's config; filled for the viewer once the page has opened (see refresh_queue).
        table = gr.Dataframe(headers=list(QUEUE_COLUMNS), value=[], column_widths=list(QUEUE_COLUMN_WIDTHS),
                             interactive=False, wrap=True, elem_id="queue-table",
                             label="Jobs: running, then waiting in order, then ended (kept across "
                                   "restarts; click a row to pick it)")
        # Not equal_height: stretched to the text boxes' height, the buttons would be as tall as a box and its
        # label; the page's CSS lines them up with the boxes' bottom edge instead.
        with gr.Row(elem_id="queue-actions"):
            job = gr.Textbox(label="Job id", placeholder="click a row", scale=2, min_width=220, elem_id="queue-job")
            place = gr.Number(value=1, precision=0, minimum=1, scale=1, min_width=120,
                              label="Place among your waiting jobs" if logins_on else "Place",
                              elem_id="queue-place")
            move_btn = gr.Button("Move to place", size="md", scale=0, min_width=150, elem_id="queue-move")
            # Red only once a job is picked: before that there is nothing it would cancel.
            cancel_btn = gr.Button("Cancel", size="md", scale=0, min_width=100, elem_id="queue-cancel")
            retry_btn = gr.Button("Retry", size="md", scale=0, min_width=100, elem_id="queue-retry")
            delete_btn = gr.Button("Delete", size="md", scale=0, min_width=100, elem_id="queue-delete")
            cancel_batch_btn = gr.Button("Cancel batch", size="md", scale=0, min_width=130,
                                         elem_id="queue-cancel-batch")
        note = gr.Markdown("", elem_id="queue-note")
        timer = gr.Timer(QUEUE_REFRESH_S)
    return QueueTab(table=table, job=job, place=place, move=move_btn, cancel=cancel_btn, retry=retry_btn,
                    delete=delete_btn, note=note, timer=timer, batches=batches,
                    cancel_batch=cancel_batch_btn)


def wire_queue_tab(demo: gr.Blocks, tab: QueueTab, health_note: gr.Markdown, outputs: StreamFrame[Component],
                   context: PageContext) -> None:
    """The table's refresh (every QUEUE_REFRESH_S and at page load, with ``health_note``), picking a row, and the
    four actions. ``outputs``: what a job's stream draws in the generate area, where a picked or retried job that
    is waiting or running is followed."""
    service = context.service

    def queue_rows_for(viewer: Viewer) -> list[list[Any]]:
        places = {job_id: place for place, job_id in enumerate(service.queued_job_ids(), start=1)}
        return queue_table_rows(*service.queue_listing(viewer), places)

    def refresh_queue(request: gr.Request) -> tuple[list[list[Any]], str, str]:
        """The viewer's queue rows, the worker's health and the viewer's batches, every QUEUE_REFRESH_S and once
        at page load."""
        jobs, damaged = service.queue_listing(context.viewer_of(request))  # one read for the rows and the groups
        places = {job_id: place for place, job_id in enumerate(service.queued_job_ids(), start=1)}
        health = service.health()
        above = (workers_markdown(health), batches_markdown(batch_summaries(jobs)))
        return queue_table_rows(jobs, damaged, places), health_markdown(health), "\n\n".join(filter(None, above))

    def pick_queued_job(rows: Any, event: gr.SelectData) -> str:
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        values = rows.values.tolist() if hasattr(rows, "values") else rows
        return str(values[row][1]) if 0 <= row < len(values) else ""

    def follow_picked_job(job_id: str | None, own_job: str | None, request: gr.Request) -> Iterator[list[Any]]:
        yield from follow_job(context, job_id, own_job, request)

    def queue_action(action: str) -> Callable[..., tuple[list[list[Any]], str]]:
        def act(job_id: str, place: float | None, request: gr.Request) -> tuple[list[list[Any]], str]:
            viewer = context.viewer_of(request)
            job_id = str(job_id or "").strip()
            if not job_id:
                return queue_rows_for(viewer), "Pick a job first: click its row."
            if not JOB_ID_PATTERN.fullmatch(job_id):  # typed text is never passed to the queue as it is
                return queue_rows_for(viewer), "There is no such job: click a row to pick one."
            try:
                if action == "move":
                    service.move(job_id, int(place or 1), viewer)
                    note = f"Moved {job_id} to place {int(place or 1)}" + (
                        "." if viewer.sees_everything else " among your waiting jobs (others' keep theirs).")
                elif action == "cancel":
                    note = f"Cancelled {job_id}." if service.cancel(job_id, viewer) else \
                        f"{job_id} is not waiting or running."
                elif action == "retry":
                    service.retry(job_id, viewer)
                    note = f"{job_id} is queued again; it resumes from its last finished section."
                elif action == "cancel batch":
                    batch_id = batch_id_of(service, job_id, viewer)
                    summary = summary_of(cancel_batch(service, batch_id, viewer))
                    note = f"Cancelled {summary.text()}" + (
                        " (the running one stops after its current step)." if summary.active else ".")
                else:
                    service.delete(job_id, viewer)
                    note = f"Deleted {job_id} (its video, if any, stays in the output folder)."
            except (FramePackError, ValueError, OverflowError) as error:
                note = (f"**{error.message}** {error.hint}".strip() if isinstance(error, FramePackError)
                        else f"**Place must be a whole number:** {error}")
            return queue_rows_for(viewer), note
        return act

    tab.timer.tick(refresh_queue, outputs=[tab.table, health_note, tab.batches], api_visibility="private",
                   queue=False, show_progress="hidden")
    demo.load(refresh_queue, outputs=[tab.table, health_note, tab.batches], api_visibility="private", queue=False,
              show_progress="hidden")
    def then_follow(event: Any) -> None:
        # "multiple": picking another job while the last pick is still followed follows the new one at once (the
        # older stream stops drawing as soon as the newer one starts, see LatestStreams).
        event.then(follow_picked_job, inputs=[tab.job, outputs.browser_job], outputs=outputs.values(),
                   api_visibility="private", show_progress="hidden", concurrency_id="stream",
                   trigger_mode="multiple")

    then_follow(tab.table.select(pick_queued_job, inputs=[tab.table], outputs=[tab.job], api_visibility="private",
                                 queue=False, show_progress="hidden"))
    tab.job.change(lambda job_id: gr.update(variant="stop" if str(job_id or "").strip() else "secondary"),
                   inputs=[tab.job], outputs=[tab.cancel], api_visibility="private", queue=False,
                   show_progress="hidden")
    for button, action in ((tab.move, "move"), (tab.cancel, "cancel"), (tab.retry, "retry"),
                           (tab.delete, "delete"), (tab.cancel_batch, "cancel batch")):
        event = button.click(queue_action(action), inputs=[tab.job, tab.place], outputs=[tab.table, tab.note],
                             api_visibility="private", queue=False, show_progress="hidden")
        if action == "retry":
            then_follow(event)
