"""The Queue tab's and the API's actions on stored jobs, each checked against who is asking.

A mixin of ``GenerationService`` (as diffusers splits a pipeline's loaders into mixins): it changes the service's
queue, then brings the service's snapshots in step with it. A job ``viewer`` may not see (``app.access``) is
answered exactly like an unknown one, so ids of other users' jobs are not revealed; ``viewer=None`` is the app itself: everything.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from app.access import Viewer
from app.service.job_status import LiveJob
from framepack_core.jobs.queue import DamagedJob, JobQueue, JobState, QueuedJob, QueueError

logger = logging.getLogger(__name__)


class QueueManagementMixin:
    """Needs ``store``, ``_condition``, ``_jobs``, ``_update`` and ``_refresh_from_store`` from the class it is
    mixed into."""

    store: JobQueue
    _condition: threading.Condition
    _jobs: dict[str, LiveJob]

    def queue_rows(self, owner: str | None = None, viewer: Viewer | None = None) -> list[QueuedJob]:
        """The stored jobs (running, pending in order, then ended), for the Queue tab and the API; ``owner`` or
        ``viewer`` narrow them."""
        if viewer is not None:
            owner = viewer.owner_filter
        return self.store.list(owner=owner)

    def queue_listing(self, viewer: Viewer | None = None) -> tuple[list[QueuedJob], list[DamagedJob]]:
        """What the Queue tab shows ``viewer``, read in one pass: the stored jobs (running, pending in order, then
        ended), and the rows that cannot be read (shown as damaged, deletable)."""
        rows = self.store.rows(owner=None if viewer is None else viewer.owner_filter)
        return ([row for row in rows if isinstance(row, QueuedJob)],
                [row for row in rows if isinstance(row, DamagedJob)])

    def move(self, job_id: str, place: int, viewer: Viewer | None = None) -> None:
        """Put a pending job at ``place``; a user sharing the app (not an admin) reorders only their own jobs,
        among the places they hold, so nobody can jump ahead of another user."""
        with self._condition:
            self._stored_visible(job_id, viewer)
            among = None if viewer is None or viewer.sees_everything else viewer.login
            self.store.move(job_id, place, among_owner=among)
            self._refresh_from_store()

    def edit(self, job_id: str, changes: dict[str, Any], viewer: Viewer | None = None) -> None:
        """Change settings of a pending job (``InvalidInputError`` names a bad one; ``QueueError`` if it is no
        longer pending)."""
        with self._condition:
            stored = self.store.edit(job_id, self._stored_visible(job_id, viewer).spec.with_changes(changes))
            if job_id in self._jobs:
                self._update(self._jobs[job_id], request=stored.request())

    def retry(self, job_id: str, viewer: Viewer | None = None) -> None:
        with self._condition:
            self._stored_visible(job_id, viewer)
            self.store.retry(job_id)
            self._refresh_from_store()  # the ended snapshot makes way for the new attempt's
            self._condition.notify_all()

    def delete(self, job_id: str, viewer: Viewer | None = None) -> None:
        with self._condition:
            if viewer is not None and not viewer.sees_everything:
                try:
                    self._stored_visible(job_id, viewer)
                except QueueError:  # unknown, someone else's, or a damaged row: only the viewer's own may go
                    if not any(row.id == job_id for row in self.store.damaged(owner=viewer.owner_filter)):
                        raise unknown_job(job_id) from None
            self.store.delete(job_id)
            job = self._jobs.pop(job_id, None)
            if job is not None and not job.snapshot.state.done:
                job.cancel.cancel()
            self._refresh_from_store()  # the jobs behind it move up

    def _stored_visible(self, job_id: str, viewer: Viewer | None) -> QueuedJob:
        """The stored job, or the unknown-job ``QueueError`` when ``viewer`` may not see it."""
        stored = self.store.get(job_id)
        if not sees(viewer, stored.owner):
            raise unknown_job(job_id)
        return stored


def sees(viewer: Viewer | None, owner: str | None) -> bool:
    return viewer is None or viewer.may_see(owner)


def unknown_job(job_id: str) -> QueueError:
    return QueueError(f"There is no job {job_id!r} in the queue.", "List the jobs to see their ids.")


def fail_crashed_job(store: JobQueue, job_id: str, error: BaseException) -> None:
    """A job that crashed the worker must not stay "running" in the queue until the next restart."""
    try:
        if store.get(job_id).state == JobState.RUNNING:
            store.end(job_id, JobState.FAILED, error=describe_error(error),
                      hint="This is a bug; please report it with the log. Retry resumes the job.")
    except Exception:  # noqa: BLE001 - the database may be what failed; the restart requeues the job
        logger.exception("Could not mark job %s failed in the queue", job_id)


def describe_error(error: BaseException) -> str:
    return getattr(error, "message", None) or f"{type(error).__name__}: {error}"
