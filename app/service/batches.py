"""Batches in the app: queueing one (the batch panel, ``POST /api/v1/batches``), showing and cancelling one, each as
the viewer may (``app.access``): with logins, a user sees and cancels only the jobs of their own batches, and a
batch with none of theirs is answered as unknown.

The batch itself (its jobs, checks and names) is the core's ``framepack_core.jobs.batch``, shared with the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress

from app.access import Viewer
from app.service.generation import GenerationService
from framepack_core.errors import InvalidInputError
from framepack_core.jobs.batch import (
    BatchJob,
    BatchSummary,
    SubmittedBatch,
    batch_jobs,
    batch_summaries,
    submit_batch,
    unknown_batch,
)
from framepack_core.jobs.queue import JobState, QueuedJob, QueueError


def queue_batch(service: GenerationService, jobs: Sequence[BatchJob], viewer: Viewer,
                max_pending: int | None = None) -> SubmittedBatch:
    """Queue every job of a batch as ``viewer``, or none: a batch that would pass ``max_pending`` waiting jobs of
    the viewer's is refused before any is queued (``QueueLimitError``)."""
    owner = viewer.submitter
    limited = owner is not None and max_pending is not None
    pending = service.store.count(owner=owner, states=(JobState.QUEUED,)) if limited else 0

    def submit_one(job: BatchJob, batch_id: str) -> str:
        return service.submit(job.request, owner=owner, max_pending=max_pending if limited else None,
                              batch_id=batch_id, label=job.label)

    return submit_batch(jobs, submit_one, service.delete, pending=pending,
                        max_pending=max_pending if limited else None)


def visible_batches(service: GenerationService, viewer: Viewer) -> list[BatchSummary]:
    """The batches among the jobs ``viewer`` sees, counted over those jobs only."""
    return batch_summaries(service.queue_rows(viewer=viewer))


def batch_of(service: GenerationService, batch_id: str, viewer: Viewer) -> list[QueuedJob]:
    """The jobs of ``batch_id`` that ``viewer`` sees; ``InvalidInputError`` (field ``batch``) when none."""
    jobs = batch_jobs(service.queue_rows(viewer=viewer), batch_id)
    if not jobs:
        raise unknown_batch(batch_id)
    return jobs


def batch_id_of(service: GenerationService, job_id: str, viewer: Viewer) -> str:
    """The batch of a job ``viewer`` sees; ``QueueError`` for an unknown or hidden job, ``InvalidInputError``
    (field ``batch``) for a job queued on its own."""
    job = service.store.get(job_id)
    if not viewer.may_see(job.owner):
        raise QueueError(f"There is no job {job_id!r} in the queue.", "List the jobs to see their ids.")
    if job.batch_id is None:
        raise InvalidInputError("batch", f"job {job_id} was queued on its own, not in a batch",
                                "Pick a job of the batch, or cancel this one with Cancel.")
    return job.batch_id


def summary_of(jobs: Sequence[QueuedJob]) -> BatchSummary:
    (summary,) = batch_summaries(jobs)
    return summary


def cancel_batch(service: GenerationService, batch_id: str, viewer: Viewer) -> list[QueuedJob]:
    """Cancel the waiting jobs of the batch and ask its running one to stop; only the jobs ``viewer`` sees.
    Returns the batch's jobs as they are afterwards."""
    for job in batch_of(service, batch_id, viewer):
        if job.state.done:
            continue
        if not service.cancel(job.id, viewer):
            with suppress(QueueError):  # not in this process's memory: the store decides; ended meanwhile: done
                service.store.cancel(job.id)
    return batch_of(service, batch_id, viewer)
