"""What the page and the API are told about jobs: their snapshots, and the worker's health.

A ``JobSnapshot`` is changed only through ``event_changes`` (an engine event of a job this process runs) or
``stored_changes`` (the queue's row of a job another process runs), so both report a job the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from framepack_core.events import (
    CancelToken,
    JobCancelled,
    JobFailed,
    JobFinished,
    SectionFinished,
    StageChanged,
    StepProgress,
)
from framepack_core.jobs.output_description import sidecar_path
from framepack_core.jobs.queue import JobState, QueuedJob
from framepack_core.request import GenerationRequest


@dataclass
class JobSnapshot:
    """Everything a page needs to draw one job. A copy: safe to read from any thread."""

    job_id: str
    state: JobState
    request: GenerationRequest
    owner: str | None = None  # the login that submitted it (None: no logins, or the CLI)
    worker: str | None = None  # the worker that runs it, when the app has several (``framepack_core.workers``)
    queue_position: int | None = None  # 1-based among queued jobs
    stage_message: str = "Waiting in the queue ..."
    section: int | None = None
    total_sections: int | None = None
    step: int | None = None
    total_steps: int | None = None
    started_at: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    progress_at: float | None = None  # wall time elapsed_s and eta_s are as of; they run on from it
    news_at: float | None = None  # wall time of the job's last event
    stage_started_at: float | None = None  # wall time the current stage began
    preview: np.ndarray | None = field(default=None, repr=False)
    partial_video: Path | None = None  # playable mp4 of the sections so far
    output_video: Path | None = None  # final mp4 (or the partial one after a stop or a failure)
    input_image: Path | None = None
    settings_file: Path | None = None
    video_frames: int | None = None
    error: str | None = None
    error_hint: str | None = None
    error_details: str = ""  # second to the error: shown folded (e.g. each missing component's folder)
    notices: list[str] = field(default_factory=list)
    version: int = 0

    def ticking(self, now: float | None = None) -> JobSnapshot:
        """A copy with the elapsed time and the ETA run on to ``now`` (wall time) while the job runs, so a stage
        that yields no event for a while (decoding, writing, loading a model) is still seen to advance."""
        if self.state != JobState.RUNNING or self.progress_at is None:
            return replace(self)
        now = time.time() if now is None else now
        passed = max(0.0, now - self.progress_at)
        eta = None if self.eta_s is None else max(0.0, self.eta_s - passed)
        return replace(self, elapsed_s=self.elapsed_s + passed, eta_s=eta, progress_at=now)


@dataclass
class WorkerHealth:
    """Whether jobs are being run, for the page and ``GET /api/v1/health``."""

    alive: bool = False  # the worker thread is running its loop
    running_here: bool = False  # this process owns the queue and runs its jobs
    last_error: str | None = None  # the last error in the worker's own loop (not a job's), until it recovers
    last_error_at: float | None = None
    queue_owner: str | None = None  # who runs the jobs, when another process does
    queue_note: str | None = None  # e.g. a damaged queue database that was moved aside at start
    # With several workers: each one's name, the job it runs (None: idle) and whether it was lost too often.
    workers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"alive": self.alive, "running_here": self.running_here, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "queue_owner": self.queue_owner, "queue_note": self.queue_note,
                "workers": [dict(worker) for worker in self.workers]}

    @property
    def problem(self) -> str | None:
        """What a user should be told, in words (None when all is well)."""
        if not self.alive:
            return "The job worker is not running: queued jobs will not start. Restart the app."
        if self.last_error:
            return f"The job worker hit an error and keeps retrying: {self.last_error}"
        retired = [worker["name"] for worker in self.workers if worker.get("retired")]
        if retired:
            return (f"Worker {', '.join(retired)} stopped too often in a row and takes no more jobs; the other "
                    "workers carry on. Restart the app to use it again.")
        if not self.running_here and self.queue_owner:
            return f"Jobs on this output folder are run by another process ({self.queue_owner})."
        return None


class LiveJob:
    """A job this process knows: its snapshot, and the token that cancels it while it runs here."""

    def __init__(self, job_id: str, request: GenerationRequest, owner: str | None = None) -> None:
        self.cancel = CancelToken()
        self.snapshot = JobSnapshot(job_id=job_id, state=JobState.QUEUED, request=request, owner=owner)
        self.work_dir: Path | None = None


def event_changes(event: object, elapsed_s: float) -> dict[str, Any]:
    """The snapshot fields one engine event changes (``elapsed_s`` since the job started)."""
    now = time.time()
    changes: dict[str, Any] = {"elapsed_s": elapsed_s, "progress_at": now, "news_at": now}
    if isinstance(event, StageChanged):
        changes.update(stage_message=event.message, stage_started_at=event.time)
        if event.eta_s is not None:
            changes.update(eta_s=event.eta_s)
    elif isinstance(event, StepProgress):
        changes.update(section=event.section, total_sections=event.total_sections, step=event.step,
                       total_steps=event.total_steps, eta_s=event.eta_s, preview=event.preview,
                       stage_message=f"Sampling section {event.section}/{event.total_sections}, "
                                     f"step {event.step}/{event.total_steps}")
    elif isinstance(event, SectionFinished):
        changes.update(partial_video=event.snapshot_path,
                       stage_message=f"Section {event.section}/{event.total_sections} written: "
                                     f"{event.video_frames} frames ({event.video_seconds:.2f} s)")
    elif isinstance(event, JobFinished):
        changes.update(state=JobState.FINISHED, output_video=event.output_path, partial_video=event.output_path,
                       settings_file=sidecar_of(event.output_path), eta_s=0.0,
                       stage_message=f"Done: {event.video_frames} frames in {event.elapsed_s:.1f} s")
    elif isinstance(event, JobCancelled):
        changes.update(state=JobState.CANCELLED, output_video=event.partial_path, partial_video=event.partial_path,
                       settings_file=sidecar_of(event.partial_path),
                       stage_message=f"Stopped after {event.sections_done} section(s)"
                                     + ("; the partial video was kept." if event.partial_path else "."))
    elif isinstance(event, JobFailed):
        changes.update(state=JobState.FAILED, error=event.message, error_hint=event.hint,
                       error_details=event.details, output_video=event.partial_path, partial_video=event.partial_path,
                       settings_file=sidecar_of(event.partial_path), stage_message="Failed")
    return changes


def stored_changes(snapshot: JobSnapshot, stored: QueuedJob, *, run_here: bool = False) -> dict[str, Any]:
    """The snapshot fields to change so that it tells what the queue's row says (empty: nothing new).
    ``run_here``: the row of a job this process ran, which its runner ended without an event."""
    if stored.state == JobState.RUNNING:
        message = (f"Running in another process: section {stored.sections_done + 1}"
                   + (f"/{stored.total_sections}" if stored.total_sections else ""))
        if (snapshot.state, snapshot.stage_message) == (JobState.RUNNING, message):
            return {}
        return {"state": JobState.RUNNING, "queue_position": None, "stage_message": message,
                "section": stored.sections_done or None, "total_sections": stored.total_sections}
    if not stored.state.done:
        return {}
    state = stored.state
    video = stored.output if state == JobState.FINISHED else stored.partial
    video = video if video is not None and video.is_file() else None
    return {"state": state, "queue_position": None, "output_video": video, "partial_video": video,
            "settings_file": sidecar_of(video), "error": stored.error, "error_hint": stored.hint,
            "section": stored.sections_done or None, "total_sections": stored.total_sections,
            "stage_message": state.value.capitalize() + ("" if run_here else " (run by another process)")}


def sidecar_of(video: Path | None) -> Path | None:
    """The sidecar JSON the engine wrote next to ``video``: its spec and fingerprint (None when there is none)."""
    if video is None:
        return None
    path = sidecar_path(video)
    return path if path.is_file() else None
