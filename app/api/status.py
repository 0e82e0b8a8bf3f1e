"""The one status shape of a job, for every edge that reports one.

``GET /api/v1/jobs/{id}`` (and the other job routes, and each ``status`` server-sent event) answer a ``JobStatus``;
Gradio's named endpoints ``/generate`` and ``/status`` return the same object as JSON, so a script reads the same
keys whichever door it used. ``JobStatuses`` builds it: live from this process's snapshot of the job when there
is one, else as the queue stored it, with server paths cut to file names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from app.api.errors import PathHider, api_text, default_hidden_folders
from app.service.generation import GenerationService, JobSnapshot
from framepack_core.jobs.output_description import sidecar_path
from framepack_core.jobs.queue import QueuedJob, QueueError


class JobStatus(BaseModel):
    """A job's state and progress: the answer of ``GET /jobs/{id}``, and what Gradio's ``/generate`` and ``/status``
    endpoints return (as a JSON object with these keys)."""

    id: str = Field(description="The job's id, as returned on submit.")
    state: str = Field(description="queued, running, finished, failed or cancelled.")
    queue_position: int | None = Field(None, description="1-based place among the waiting jobs, while queued.")
    stage: str | None = Field(None, description="What the job is doing now, in words.")
    section: int | None = Field(None, description="The section being made (1-based), or the sections done.")
    total_sections: int | None = Field(None, description="The sections the video is made of.")
    step: int | None = Field(None, description="The sampling step within the section.")
    total_steps: int | None = Field(None, description="Sampling steps per section.")
    elapsed_s: float | None = Field(None, description="Seconds since the job started running.")
    eta_s: float | None = Field(None, description="Estimated seconds until the job ends, while it runs.")
    video_frames: int | None = Field(None, description="Frames of the finished video, once the job knows them.")
    video: str | None = Field(None, description="The video's file name; download it from GET /jobs/{id}/video.")
    error: str | None = Field(None, description="What went wrong, when the job failed.")
    hint: str | None = Field(None, description="How to fix the error.")
    notices: list[str] = Field([], description="Things worth knowing about the run (e.g. the memory plan).")
    spec: dict[str, Any] | None = Field(None, description="The job's spec: its settings and input image hash.")
    batch_id: str | None = Field(None, description="The batch it was queued with (GET /batches/{id}), if any.")
    worker: str | None = Field(None, description="The worker that runs it (or ran it last), when the app runs "
                                                 "jobs on several workers: a device such as cuda:1, or a Ray actor.")
    transformer_calls: int | None = Field(None, description="Once the job has ended with a video: the transformer "
                                                           "calls its last run's sampling made (both guidance "
                                                           "passes count).")
    skipped_calls: int | None = Field(None, description="Of those, the calls the step cache (the job's spec.cache: "
                                                       "TeaCache, MagCache ...) answered without running the model.")




class JobStatuses:
    """The ``JobStatus`` of jobs run by ``service``; videos are named only if they lie in ``output_dir``.

    ``hide_paths``: what cuts server paths out of messages (default: the output folder, the queue's folder and the
    temp folder, as the REST API's error answers do).
    """

    def __init__(self, service: GenerationService, output_dir: Path, hide_paths: PathHider | None = None) -> None:
        self._service = service
        self._output_dir = Path(output_dir).resolve()
        self._hide_paths = hide_paths or PathHider(default_hidden_folders(self._output_dir, service.store.root))

    def of(self, job: QueuedJob, snapshot: JobSnapshot | None = None) -> JobStatus:
        """The stored ``job`` as reported: live from ``snapshot`` (else this process's own, if it has one)."""
        if snapshot is None:
            try:
                snapshot = self._service.snapshot(job.id)
            except KeyError:
                pass
        if snapshot is None:
            return self._hidden(_stored_status(job, self._output_dir))
        return self._hidden(_live_status(snapshot, job, self._output_dir))

    def of_snapshot(self, snapshot: JobSnapshot) -> JobStatus:
        """The job of ``snapshot`` (one the caller may see), with its stored row."""
        try:
            return self.of(self._service.store.get(snapshot.job_id), snapshot)
        except QueueError:  # deleted or damaged since the snapshot was taken: report the snapshot alone
            pass
        return self._hidden(_live_status(snapshot, None, self._output_dir))

    def _hidden(self, shown: JobStatus) -> JobStatus:
        hide_paths = self._hide_paths
        return shown.model_copy(update={
            "stage": None if shown.stage is None else hide_paths(shown.stage),
            "error": None if shown.error is None else hide_paths(api_text(shown.error)),
            "hint": None if shown.hint is None else hide_paths(api_text(shown.hint)),
            "notices": [hide_paths(notice) for notice in shown.notices]})


def served_video(job: QueuedJob, output_dir: Path) -> Path | None:
    """The video ``/jobs/{id}/video`` serves: the finished one, else the partial one kept from a stop or a failure
    (of this attempt or an earlier one). Only ever a file inside the output folder."""
    return _inside(output_dir, job.output, job.partial)


def _inside(output_dir: Path, *candidates: Path | str | None) -> Path | None:
    for candidate in candidates:
        if candidate is not None:
            path = Path(candidate).resolve()
            if path.is_file() and path.is_relative_to(output_dir):
                return path
    return None


def cache_counts(video: Path | None) -> dict[str, int | None]:
    """The transformer calls and skipped calls the sidecar of ``video`` records (None each where it records none:
    no video, or one made before the counts were kept)."""
    counts: dict[str, int | None] = {"transformer_calls": None, "skipped_calls": None}
    if video is None:
        return counts
    try:
        cache = json.loads(sidecar_path(video).read_text(encoding="utf-8"))["fingerprint"]["cache"]
    except (OSError, ValueError, KeyError, TypeError):
        return counts
    for key in counts:
        value = cache.get(key) if isinstance(cache, dict) else None
        counts[key] = value if isinstance(value, int) and not isinstance(value, bool) else None
    return counts


def _live_status(snapshot: JobSnapshot, job: QueuedJob | None, output_dir: Path) -> JobStatus:
    video = None
    if snapshot.state.done:
        video = served_video(job, output_dir) if job is not None else _inside(output_dir, snapshot.output_video)
    return JobStatus(id=snapshot.job_id, state=snapshot.state.value, queue_position=snapshot.queue_position,
                     stage=snapshot.stage_message, section=snapshot.section, total_sections=snapshot.total_sections,
                     step=snapshot.step, total_steps=snapshot.total_steps, elapsed_s=round(snapshot.elapsed_s, 3),
                     eta_s=None if snapshot.eta_s is None else round(snapshot.eta_s, 3),
                     video_frames=snapshot.video_frames, video=None if video is None else video.name,
                     error=snapshot.error, hint=snapshot.error_hint, notices=list(snapshot.notices),
                     spec=None if job is None else job.spec.to_dict(), batch_id=None if job is None else job.batch_id,
                     worker=snapshot.worker or (None if job is None else job.worker), **cache_counts(video))


def _stored_status(job: QueuedJob, output_dir: Path) -> JobStatus:
    video = served_video(job, output_dir) if job.state.done else None
    return JobStatus(id=job.id, state=job.state.value, section=job.sections_done or None,
                     total_sections=job.total_sections, error=job.error, hint=job.hint,
                     video=None if video is None else video.name, spec=job.spec.to_dict(), batch_id=job.batch_id,
                     worker=job.worker, **cache_counts(video))
