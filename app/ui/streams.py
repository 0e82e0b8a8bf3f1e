"""Following a job on the page: which snapshots to draw, which stream a browser session follows, and the
frames (one value per stream output) each snapshot becomes."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.access import Viewer
from app.service.generation import GenerationService, JobSnapshot
from app.service.outputs import ServedFiles
from app.ui.render import render_message, render_progress


def snapshots_to_show(service: GenerationService, job_id: str, min_interval_s: float,
                      redraw_interval_s: float | None = None, viewer: Viewer | None = None
                      ) -> Iterator[JobSnapshot]:
    """The job's snapshots worth drawing: the current one, then changes, at most one per ``min_interval_s``, and
    the unchanged one again after ``redraw_interval_s`` without news (when given).

    Changes that matter at once (a new section video, a queue place, a new state, the end) go out as soon as they
    happen; step-by-step progress and previews are coalesced to the latest within the interval. With the real
    models a step takes seconds, so every step is shown; with the tiny ones steps come every few milliseconds
    and drawing each would cost the engine more time than the step itself. Raises ``KeyError`` for a job that is
    unknown or hidden from ``viewer``.
    """
    sent = service.snapshot(job_id, viewer)
    yield sent
    sent_at = time.monotonic()
    current = sent
    while not sent.state.done:
        due = sent_at + min_interval_s
        timeout = 0.5 if current.version == sent.version else max(0.0, due - time.monotonic())
        current = service.wait_for_change(job_id, current.version, timeout=timeout, viewer=viewer)
        if current.version == sent.version:
            if redraw_interval_s is not None and time.monotonic() - sent_at >= redraw_interval_s:
                sent_at = time.monotonic()
                yield sent
            continue  # nothing new yet
        urgent = (current.state != sent.state or current.partial_video != sent.partial_video
                  or current.queue_position != sent.queue_position or current.error != sent.error)
        if urgent or time.monotonic() >= due:
            sent, sent_at = current, time.monotonic()
            yield sent


class LatestStreams:
    """Which stream each browser session follows: the latest one started. Starting a job cancels the page-load
    stream, but a cancelled generator can still be computing a frame; checking before each yield keeps that
    frame (another tab's job, say) from drawing over the new job's progress or becoming the tab's job to stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, int] = {}
        self._counter = itertools.count(1)

    def begin(self, session: str) -> int:
        with self._lock:
            token = next(self._counter)
            self._latest[session] = token
            return token

    def is_current(self, session: str, token: int) -> bool:
        with self._lock:
            return self._latest.get(session) == token

    def end(self, session: str, token: int) -> None:
        with self._lock:
            if self._latest.get(session) == token:
                del self._latest[session]


# Frames: one value (or gr.skip()) per stream output, in the order of build_app's stream_outputs ------------------
# 0 job_state, 1 browser_job, 2 preview, 3 progress, 4 video, 5 final_file, 6 start, 7 stop, 8 gallery, 9 records

def idle_frame(message: str = "Upload an image, write a prompt and press Start.", *, hint: str = "",
                error: bool = False) -> list[Any]:
    frame = [gr.skip()] * 10
    frame[3] = render_message(message, hint=hint, error=error, state="refused" if error else "idle")
    frame[6], frame[7] = gr.update(interactive=True), gr.update(interactive=False)
    return frame


def _buttons(snapshot: JobSnapshot, own: bool) -> tuple[Any, Any]:
    running = not snapshot.state.done
    # Another tab's job does not block this tab from queueing its own.
    return gr.update(interactive=not (own and running)), gr.update(interactive=running)


def _shown_video(snapshot: JobSnapshot, served: ServedFiles) -> str | None:
    """The video for the player: the partial one while the job runs (each new section plays once, no loop, so the
    browser is not decoding video all the time next to a busy engine), the final one, looping, once it is done.
    Always a served copy: the output folder itself is never handed to Gradio."""
    if snapshot.state.done:
        return served.serve(snapshot.output_video)
    return served.serve(snapshot.partial_video)


def first_frame(snapshot: JobSnapshot, own: bool, served: ServedFiles) -> list[Any]:
    frame = [gr.skip()] * 10
    frame[0] = snapshot.job_id
    if own:
        frame[1] = snapshot.job_id
    frame[2] = gr.update(value=snapshot.preview, visible=snapshot.preview is not None and not snapshot.state.done)
    frame[3] = render_progress(snapshot, own=own)
    shown = _shown_video(snapshot, served)
    frame[4] = gr.update(value=shown, loop=snapshot.state.done)
    frame[5] = shown if snapshot.state.done else None
    frame[6], frame[7] = _buttons(snapshot, own)
    return frame


def next_frame(previous: JobSnapshot, snapshot: JobSnapshot, own: bool, served: ServedFiles) -> list[Any]:
    frame = [gr.skip()] * 10
    frame[0] = snapshot.job_id  # cheap, and puts the tab's Stop back on its own job should anything change it
    if snapshot.state.done:
        frame[2] = gr.update(visible=False)
    elif snapshot.preview is not None and snapshot.preview is not previous.preview:
        frame[2] = gr.update(value=snapshot.preview, visible=True)
    frame[3] = render_progress(snapshot, own=own)
    if snapshot.state.done or snapshot.partial_video != previous.partial_video:
        shown = _shown_video(snapshot, served)
        if shown is not None or snapshot.state.done:
            frame[4] = gr.update(value=shown, loop=snapshot.state.done)
        if snapshot.state.done:
            frame[5] = shown
    if snapshot.state.done != previous.state.done or snapshot is previous:  # a change, or a redraw
        frame[6], frame[7] = _buttons(snapshot, own)
    return frame
