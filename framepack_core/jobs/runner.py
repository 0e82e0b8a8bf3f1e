"""Runs queued jobs through the engine, one at a time, keeping the queue's rows in step with each job.

The one runner: ``python -m framepack_core jobs run`` and the app's service (``app.service.generation``) both run
jobs here, so a job is named, recorded, cancelled and resumed the same way wherever it runs.

Each job runs in its own job folder (``JobQueue.job_dir``), so a job interrupted by a crash or a restart resumes
from its last finished section the next time it is claimed. A cancel requested through the queue (from another
process: the CLI, the API) is seen at the next step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from framepack_core.errors import FramePackError, InvalidInputError
from framepack_core.events import (
    CancelToken,
    EngineEvent,
    JobCancelled,
    JobFailed,
    JobFinished,
    SectionFinished,
    StepProgress,
    WorkerLost,
)
from framepack_core.jobs.output_naming import output_path
from framepack_core.jobs.queue import JobQueue, JobState, QueuedJob
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.workers.remote import Worker, WorkerLostError

logger = logging.getLogger(__name__)

EventCallback = Callable[[QueuedJob, EngineEvent], None]


class QueueRunner:
    """Runs the queue's claimed jobs through one engine: the one runner of ``jobs run`` and of the app's service."""

    def __init__(self, queue: JobQueue, engine: FramePackEngine | Worker, output_dir: Path,
                 worker_name: str | None = None) -> None:
        """``engine``: this process's engine, or a worker that runs one elsewhere (``framepack_core.workers``);
        ``worker_name``: what the queue's rows say runs the jobs claimed here."""
        self.queue = queue
        self.engine = engine
        self.output_dir = Path(output_dir)
        self.worker_name = worker_name if worker_name is not None else getattr(engine, "name", None)

    def run_job(self, job: QueuedJob, on_event: EventCallback | None = None, cancel: CancelToken | None = None, *,
                snapshot_dir: Callable[[Path], Path] | None = None,
                requeue_if_cancelled: Callable[[], bool] = lambda: False) -> QueuedJob:
        """Run one claimed (running) job to its end; returns its final row.

        ``on_event`` gets each event after the row is updated, with the job as named (its ``output`` set).
        ``snapshot_dir``: given the job's video, the folder for a playable mp4 after each section (a UI's player).
        ``requeue_if_cancelled``: asked when the job stops on a cancel; True (its worker shuts down) puts it back
        at the front of the queue instead of ending it, to resume at the next start."""
        cancel = cancel or CancelToken()
        try:
            request = job.request()
            if request.output is None:
                request = job.request(output=output_path(self.output_dir, seed=request.seed, job_id=job.id,
                                                         label=job.label))
                self.queue.set_output(job.id, request.output)
        except FramePackError as error:
            return self.queue.end(job.id, JobState.FAILED, error=error.message, hint=error.hint)
        job = replace(job, output=request.output)
        last: EngineEvent | None = None
        try:
            for event in refused_as_failed(job.id, self.engine.generate(
                    request, cancel=cancel, job_id=job.id, job_dir=self.queue.job_dir(job.id),
                    snapshot_dir=None if snapshot_dir is None else snapshot_dir(request.output))):
                last = event
                record_event(self.queue, job.id, event, cancel,
                             requeue_if_cancelled=isinstance(event, JobCancelled) and requeue_if_cancelled())
                if on_event is not None:
                    on_event(job, event)
        except WorkerLostError as error:
            # Its folder keeps the checkpoint of the last finished section: the next free worker resumes it.
            logger.warning("%s; job %s goes back to the front of the queue", error.message, job.id)
            if on_event is not None:
                on_event(job, WorkerLost(job.id, worker=error.worker, message=error.message))
            return self.queue.requeue(job.id)
        if not isinstance(last, (JobFinished, JobCancelled, JobFailed)):
            return self.queue.end(job.id, JobState.FAILED, error="The job ended without a result.",
                                  hint="This is a bug; please report it with the log.")
        return self.queue.get(job.id)

    def run_pending(self, on_event: EventCallback | None = None, should_stop: Callable[[], bool] = lambda: False
                    ) -> list[QueuedJob]:
        """Requeue interrupted jobs, then run pending jobs in queue order until none is left (or ``should_stop``).
        The runner owns the queue meanwhile; ``QueueBusyError`` (naming it) when another process does."""
        with self.queue.require_ownership():
            for job_id in self.queue.requeue_interrupted():
                logger.info("Job %s was interrupted; it resumes from its last finished section", job_id)
            done = []
            while not should_stop():
                job = self.queue.claim_next(self.worker_name)
                if job is None:
                    break
                done.append(self.run_job(job, on_event))
            return done


def refused_as_failed(job_id: str, events: Iterator[EngineEvent]) -> Iterator[EngineEvent]:
    """``events``, or a failure event when the engine refuses the request before its first event: a queued job
    that was valid when submitted can stop being so (an edit shortened it past a keyframe), and must end as failed,
    not crash its worker."""
    try:
        first = next(events, None)
    except InvalidInputError as error:
        yield JobFailed(job_id, message=error.message, hint=error.hint, error_type=type(error).__name__,
                        partial_path=None, sections_done=0)
        return
    if first is not None:
        yield first
        yield from events


def record_event(queue: JobQueue, job_id: str, event: EngineEvent, cancel: CancelToken, *,
                 requeue_if_cancelled: bool = False) -> None:
    """Keep a running job's stored row in step with one of its events: progress after each section, its end;
    a cancel asked for through the queue (another process) cancels ``cancel``. ``requeue_if_cancelled``: a job
    stopped because its worker shuts down goes back to the front of the queue instead of ending. The partial
    video of a job that did not finish is stored as its ``partial``: the row's output keeps the job's final name,
    which a retry writes to."""
    if isinstance(event, SectionFinished):
        if queue.record_progress(job_id, event.section, event.total_sections):
            cancel.cancel()
    elif isinstance(event, StepProgress):
        if not cancel.cancelled and queue.cancel_requested(job_id):
            cancel.cancel()
    elif isinstance(event, JobFinished):
        queue.end(job_id, JobState.FINISHED, output=event.output_path)
    elif isinstance(event, JobCancelled):
        if requeue_if_cancelled:
            queue.requeue(job_id)
        else:
            queue.end(job_id, JobState.CANCELLED, partial=event.partial_path)
    elif isinstance(event, JobFailed):
        queue.end(job_id, JobState.FAILED, partial=event.partial_path, error=event.message, hint=event.hint)
