"""Following a job on the page: which snapshots to draw, which stream a browser session follows, and the
frames (a value, by name, for each output the stream draws) each snapshot becomes."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

import gradio as gr

from app.access import Viewer
from app.service.generation import GenerationService, JobSnapshot
from app.service.outputs import ServedFiles
from app.ui.render import render_message, render_progress

T = TypeVar("T")


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


@dataclass
class StreamFrame(Generic[T]):
    """One update of the outputs a job's stream draws, by name; ``gr.skip()`` leaves an output as it is.

    The page builds one whose fields are the output components (its ``values()`` are the handlers' ``outputs``), and
    each frame a stream yields holds the same fields' new values, so both lists come out in the one field order.
    """

    shown_job: T = field(default_factory=gr.skip)  # the job this tab shows, which its Stop stops
    browser_job: T = field(default_factory=gr.skip)  # this browser's own last job, to reconnect to after a reload
    preview: T = field(default_factory=gr.skip)
    progress: T = field(default_factory=gr.skip)
    video: T = field(default_factory=gr.skip)
    final_file: T = field(default_factory=gr.skip)
    start: T = field(default_factory=gr.skip)
    stop: T = field(default_factory=gr.skip)
    gallery: T = field(default_factory=gr.skip)
    gallery_records: T = field(default_factory=gr.skip)  # the gallery's records, to map a click to its settings

    def values(self) -> list[T]:
        return [getattr(self, item.name) for item in fields(self)]


def idle_frame(message: str = "Upload an image, write a prompt and press Start.", *, hint: str = "",
               error: bool = False) -> StreamFrame[Any]:
    return StreamFrame(progress=render_message(message, hint=hint, error=error, state="refused" if error else "idle"),
                       start=gr.update(interactive=True), stop=gr.update(interactive=False))


def _buttons(snapshot: JobSnapshot, own: bool, one_at_a_time: bool) -> tuple[Any, Any]:
    running = not snapshot.state.done
    # Another tab's job does not block this tab from queueing its own; nor does its own when the app has several
    # workers (``one_at_a_time`` False), where the next job starts on a free one at once.
    return gr.update(interactive=not (own and running and one_at_a_time)), gr.update(interactive=running)


def _shown_video(snapshot: JobSnapshot, served: ServedFiles) -> str | None:
    """The video for the player: the partial one while the job runs (each new section plays once, no loop, so the
    browser is not decoding video all the time next to a busy engine), the final one, looping, once it is done.
    Always a served copy: the output folder itself is never handed to Gradio."""
    if snapshot.state.done:
        return served.serve(snapshot.output_video)
    return served.serve(snapshot.partial_video)


def first_frame(snapshot: JobSnapshot, own: bool, served: ServedFiles, one_at_a_time: bool = True
                ) -> StreamFrame[Any]:
    shown = _shown_video(snapshot, served)
    start, stop = _buttons(snapshot, own, one_at_a_time)
    return StreamFrame(
        shown_job=snapshot.job_id, browser_job=snapshot.job_id if own else gr.skip(),
        preview=gr.update(value=snapshot.preview, visible=snapshot.preview is not None and not snapshot.state.done),
        progress=render_progress(snapshot, own=own), video=gr.update(value=shown, loop=snapshot.state.done),
        final_file=shown if snapshot.state.done else None, start=start, stop=stop)


def next_frame(previous: JobSnapshot, snapshot: JobSnapshot, own: bool, served: ServedFiles,
               one_at_a_time: bool = True) -> StreamFrame[Any]:
    # shown_job every time: cheap, and puts the tab's Stop back on its own job should anything change it.
    frame = StreamFrame[Any](shown_job=snapshot.job_id, progress=render_progress(snapshot, own=own))
    if snapshot.state.done:
        frame.preview = gr.update(visible=False)
    elif snapshot.preview is not None and snapshot.preview is not previous.preview:
        frame.preview = gr.update(value=snapshot.preview, visible=True)
    if snapshot.state.done or snapshot.partial_video != previous.partial_video:
        shown = _shown_video(snapshot, served)
        if shown is not None or snapshot.state.done:
            frame.video = gr.update(value=shown, loop=snapshot.state.done)
        if snapshot.state.done:
            frame.final_file = shown
    if snapshot.state.done != previous.state.done or snapshot is previous:  # a change, or a redraw
        frame.start, frame.stop = _buttons(snapshot, own, one_at_a_time)
    return frame
