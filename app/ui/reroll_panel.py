"""Re-rolling a finished job from one of its sections, in the Story panel: the job's sections as choices, what a
re-roll from one of them will change (said before the button is pressed), and the new job streamed like a Start's.

The re-roll itself is ``GenerationService.reroll``: a new job that keeps the sections made before the chosen one
and the old video.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr
from gradio.components import Component

from app.service.generation import JobState
from app.ui.context import PageContext
from app.ui.generate_tab import RANDOM_SEED_LIMIT, follow_job
from app.ui.render import readable_error
from app.ui.story import ordinal, reroll_plan, reroll_seed, spans_in_video_order
from app.ui.story_panel import REROLL_IDLE, StoryPanel
from app.ui.streams import StreamFrame
from framepack_core.errors import FramePackError

logger = logging.getLogger(__name__)


def reroll_view(context: PageContext, job_id: str | None, request: gr.Request | None) -> list[Any]:
    """The re-roll part for ``job_id``: its sections as choices when it has finished, else the idle words.
    Returns updates for (reroll_job, note, from, seed, prompt, plan, start)."""
    snapshot = None
    if job_id:
        try:
            snapshot = context.service.snapshot(str(job_id), context.viewer_of(request))
        except KeyError:
            snapshot = None
    if snapshot is None or snapshot.state != JobState.FINISHED:
        hidden = gr.update(visible=False)
        return [None, REROLL_IDLE, gr.update(visible=False, value=None, choices=[]), hidden, hidden, "",
                gr.update(visible=False, interactive=False)]
    job = snapshot.request
    spans = spans_in_video_order(job.model, job.seconds, job.latent_window_size)
    choices = [(f"{span.start_s:.1f} – {span.end_s:.1f} s (made {ordinal(span.number)})", span.number)
               for span in spans]
    note = (f"Job `{snapshot.job_id}` has finished: pick the section to make again. Its sections, in video order "
            "(\"made 1st\" was generated first):")
    shown = gr.update(visible=True)
    return [snapshot.job_id, note, gr.update(visible=True, choices=choices, value=None), shown,
            gr.update(visible=True, value=""), "", gr.update(visible=True, interactive=False)]


def reroll_preview(context: PageContext, job_id: str | None, from_section: int | None,
                   request: gr.Request | None) -> tuple[str, Any]:
    """What a re-roll from ``from_section`` will change, said before the button is pressed."""
    if not job_id or from_section is None:
        return "", gr.update(interactive=False)
    try:
        job = context.service.snapshot(str(job_id), context.viewer_of(request)).request
    except KeyError:
        return "That job is no longer known to the app.", gr.update(interactive=False)
    try:
        plan = reroll_plan(job.model, job.seconds, job.latent_window_size, int(from_section))
    except FramePackError as error:
        return readable_error(error, None)[0], gr.update(interactive=False)
    return f"**What changes:** {plan.text}", gr.update(interactive=True)


def start_reroll(context: PageContext, job_id: str | None, from_section: int | None, seed: Any, prompt: str | None,
                 request: gr.Request | None) -> str:
    """Queue the re-roll as a new job (the old video is kept) and return its id; raises ``gr.Error`` with the
    service's words for what it refuses."""
    if not job_id or from_section is None:
        raise gr.Error("Pick a section of a finished job first.")
    try:
        new_id = context.service.reroll(str(job_id), int(from_section),
                                        seed=reroll_seed(seed, random.randrange(RANDOM_SEED_LIMIT)),
                                        prompt=(prompt or "").strip() or None, viewer=context.viewer_of(request),
                                        max_pending=context.settings.max_pending_per_user)
    except (FramePackError, KeyError, RuntimeError) as error:
        message, hint = readable_error(error, None)
        raise gr.Error(f"{message} How to fix: {hint}" if hint else message) from None
    logger.info("Job %s re-rolls job %s from section %s", new_id, job_id, from_section)
    return new_id


def wire_reroll(panel: StoryPanel, outputs: StreamFrame[Component], context: PageContext,
                shown_jobs: Sequence[Component], after_streams: Sequence[Any]) -> None:
    """``shown_jobs``: components holding a job id the re-roll part should show (the generate area's shown job,
    the Queue tab's pick); ``after_streams``: the stream events after which the shown job may have finished."""
    private = {"api_visibility": "private", "show_progress": "hidden"}
    view_outputs = [panel.reroll_job, panel.reroll_note, panel.reroll_from, panel.reroll_seed, panel.reroll_prompt,
                    panel.reroll_plan, panel.reroll_start]

    def view(job_id: str | None, request: gr.Request) -> list[Any]:
        return reroll_view(context, job_id, request)

    for holder in shown_jobs:
        holder.change(view, inputs=[holder], outputs=view_outputs, concurrency_limit=None, **private)
    for event in after_streams:
        event.then(view, inputs=[outputs.shown_job], outputs=view_outputs, concurrency_limit=None, **private)

    def preview(job_id: str | None, from_section: int | None, request: gr.Request) -> tuple[str, Any]:
        return reroll_preview(context, job_id, from_section, request)

    panel.reroll_from.change(preview, inputs=[panel.reroll_job, panel.reroll_from],
                             outputs=[panel.reroll_plan, panel.reroll_start], concurrency_limit=None, **private)

    def on_reroll(job_id: str | None, from_section: int | None, seed: Any, prompt: str | None,
                  request: gr.Request) -> Iterator[list[Any]]:
        new_id = start_reroll(context, job_id, from_section, seed, prompt, request)
        # The new job is this browser's own: it streams like a Start's.
        yield from follow_job(context, new_id, new_id, request)

    panel.reroll_start.click(on_reroll, inputs=[panel.reroll_job, panel.reroll_from, panel.reroll_seed,
                                                panel.reroll_prompt],
                             outputs=outputs.values(), concurrency_id="stream", trigger_mode="once", **private)
