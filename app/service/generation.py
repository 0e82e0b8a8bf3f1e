"""One generation at a time per device, from the job queue that browser tabs, API clients and the CLI share.

The UI never talks to the engine directly: it submits a ``GenerationRequest`` here, then polls
``snapshot(job_id)`` (or blocks in ``wait_for_change``) to render progress. Jobs outlive the browser tab that
started them, so a refreshed page reconnects with ``active_job_id()``.

Jobs are stored in the SQLite queue (``framepack_core.jobs.queue``) and run by its one runner
(``framepack_core.jobs.runner.QueueRunner``), the same as ``python -m framepack_core jobs run``: the queue's order
and places are read from the database, and the snapshots are this process's view of them, kept in step by the
runner's events (jobs run here) and by the stored rows (jobs run or changed by another process).

Per job the output folder gets the final mp4, the cropped input image and the video's sidecar JSON (see
``app.service.outputs``). Per-section snapshots for the live player go to a hidden folder removed when the job ends,
unless ``keep_intermediates`` is set.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.access import Viewer
from app.service.job_status import JobSnapshot, JobState, LiveJob, WorkerHealth, stored_changes
from app.service.outputs import OutputRecord, list_outputs, sweep_snapshot_dirs
from app.service.queue_management import QueueManagementMixin, sees
from app.service.reroll import RerollMixin
from app.service.worker_slots import WorkerSlot, WorkerSlotsMixin
from framepack_core.errors import FramePackError
from framepack_core.jobs.queue import JobQueue, QueuedJob, QueueError, QueueOwnership
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.pipeline.timings import StageTimings
from framepack_core.request import GenerationRequest
from framepack_core.workers.remote import Worker

logger = logging.getLogger(__name__)


class GenerationService(QueueManagementMixin, RerollMixin, WorkerSlotsMixin):
    """Owns the engine (or the workers) and a thread per worker; every public method is thread-safe.

    Methods that take a ``viewer`` act only on jobs that viewer may see (``app.access``); a job hidden from the
    viewer is reported exactly like an unknown one, so ids of other users' jobs are not revealed. ``viewer=None``
    is the app itself (and tests): everything.
    """

    def __init__(
        self,
        engine_factory: Callable[[], FramePackEngine],
        output_dir: Path,
        keep_intermediates: bool = False,
        max_finished_jobs: int = 200,
        idle_release_s: float | None = None,
        queue: JobQueue | None = None,
        workers: Sequence[Worker] = (),
    ) -> None:
        """``idle_release_s``: release the models' memory after this many seconds without a job (None: never).

        ``queue``: the persistent queue (``framepack_core.jobs.queue``), normally the output folder's. Jobs are
        stored in it and run in their job folders: pending jobs survive a restart, an interrupted job resumes
        from its last finished section, and jobs submitted by other processes (the CLI) run here too. One process
        at a time owns a queue and runs its jobs; while another one does, this service only submits and reports
        the stored state, and takes over when the other one stops. Without a queue the service keeps one of its
        own in a temporary folder, removed with the service: the same runner, but no job outlives the process.

        ``workers``: run jobs on these (``framepack_core.workers``: a process per device, Ray actors), as many at
        once as there are workers, instead of one at a time on ``engine_factory``'s engine, which then only
        answers estimates. The service closes them when it stops.
        """
        if queue is None:
            self._temporary_queue_dir = tempfile.TemporaryDirectory(prefix="framepack-queue-")
            queue = JobQueue(Path(self._temporary_queue_dir.name))
        self.store = queue
        self._engine_factory = engine_factory
        self._slots = [WorkerSlot(worker) for worker in workers] or [WorkerSlot()]
        self._estimates: FramePackEngine | None = None  # with workers: an engine of this process that loads nothing
        self._runner_lock = threading.Lock()
        self._idle_release_s = idle_release_s
        self._release_requested = False
        self.output_dir = Path(output_dir)
        self.keep_intermediates = keep_intermediates
        self._max_finished = max_finished_jobs
        self._jobs: dict[str, LiveJob] = {}
        self._condition = threading.Condition()
        self._stopping = False
        self._ownership: QueueOwnership | None = None
        self._health = WorkerHealth(queue_note=queue.recovery_note)

    # Lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._condition:
            if any(slot.thread is not None for slot in self._slots):
                return
            self._stopping = False
            self._take_ownership()
            self._refresh_from_store()
            for slot in self._slots:
                slot.retired, slot.losses = False, 0
                slot.thread = threading.Thread(target=self._work, args=(slot,), daemon=True,
                                               name=f"framepack-worker-{slot.name or 'app'}")
                slot.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the running job (it goes back to the front of the queue) and wait for the worker; queued jobs stay
        queued, to run at the next start."""
        with self._condition:
            self._stopping = True
            for job in self._jobs.values():
                if job.snapshot.state == JobState.QUEUED:
                    self._update(job, state=JobState.CANCELLED, queue_position=None,
                                 stage_message="The app is shutting down; the job stays queued and runs when it "
                                               "starts again.")
            # A job that has just finished may already be deleted while its worker is still winding down.
            for job_id in self._running_ids():
                if job_id in self._jobs:
                    self._jobs[job_id].cancel.cancel()
            self._condition.notify_all()
            threads = [slot.thread for slot in self._slots if slot.thread is not None]
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for slot in self._slots:
            slot.thread = None
            if slot.worker is not None:
                slot.worker.close()
                slot.models_loaded = False
        with self._condition:
            if self._ownership is not None:
                self._ownership.release()
                self._ownership = None
                self._health.running_here = False

    def _take_ownership(self) -> bool:
        """Become the process that runs this queue's jobs, if no other live process is; caller holds the lock."""
        if self._ownership is None:
            # Taking the lock may wait a moment for another process's probe: let pages read snapshots meanwhile.
            self._condition.release()
            try:
                ownership = self.store.take_ownership()
            finally:
                self._condition.acquire()
            if ownership is not None and (self._stopping or self._ownership is not None):
                ownership.release()  # stopped, or another thread (start) took it while the lock was free
                return self._ownership is not None
            self._ownership = ownership
            if self._ownership is None:
                holder = self.store.owner_description()
                if holder != self._health.queue_owner:
                    logger.warning("Another process runs the jobs of %s: %s. This app queues jobs and shows "
                                   "their progress from the queue; it runs them once that process ends.",
                                   self.store.root, holder)
                self._health.queue_owner = holder
                return False
            self._health.queue_owner = None
            self._health.running_here = True
            for job_id in self.store.requeue_interrupted():
                logger.info("Job %s was interrupted; it resumes from its last finished section", job_id)
            sweep_snapshot_dirs(self.output_dir)
        return True

    # Memory ----------------------------------------------------------------------------------------------------

    def free_memory(self) -> str:
        """Release the models' RAM and VRAM now, or as soon as the running and queued jobs are done.

        Models are loaded again by the next job (prompt embeddings stay cached). Returns what happened, in words.
        """
        with self._condition:
            if self._running_ids() or self.store.count(states=(JobState.QUEUED,)):
                self._release_requested = True
                self._condition.notify_all()
                return "Memory will be freed when the queued jobs are done."
            loaded = self._mark_for_release(self._slots)
            if not loaded:
                return "No models are loaded; nothing to free."
        self._release_marked(loaded)  # outside the lock: the page's reads go on meanwhile
        if self._slots[0].worker is not None:
            return (f"Stopped {len(loaded)} worker(s) ({', '.join(slot.name for slot in loaded)}) and freed their "
                    "models' memory; the next job starts them again.")
        return "Freed the models' memory; the next job loads them again."

    def engine(self) -> FramePackEngine:
        """The engine the jobs run on, made now if no job has run yet (that loads no model): for estimates. With
        workers, an engine of this process made the same way, which never loads a model."""
        if self._slots[0].worker is None:
            return self._ensure_runner(self._slots[0]).engine
        with self._runner_lock:
            if self._estimates is None:
                self._estimates = self._engine_factory()
            elif self._estimates.timings.path is not None:  # the worker processes learn into the same file
                self._estimates.timings = StageTimings.load(self._estimates.timings.path)
            return self._estimates

    def _models_dir(self) -> Path | None:
        models = getattr(self.engine(), "models", None)  # None: a service made without an engine (tests)
        return models.source.models_dir if models is not None else None

    # Jobs ------------------------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, owner: str | None = None, max_pending: int | None = None, *,
               batch_id: str | None = None, label: str | None = None) -> str:
        """Queue a job; raises ``InvalidInputError`` for bad input before anything is queued. ``owner``: the
        login that submitted it. ``max_pending``: refuse (``QueueLimitError``) when ``owner`` already has that many
        jobs waiting. ``batch_id``, ``label``: its batch (``app.service.batches``)."""
        from framepack_core.pipeline.input_checks import check_input_files

        request = request.validated()
        # Refuse broken files now, not when the job's turn comes; LoRAs are matched to this engine's transformer.
        check_input_files(request, self._models_dir() if request.loras else None)
        with self._condition:
            if self._stopping:
                raise RuntimeError("The service is shutting down")
            spec = JobSpec.from_request(request, file_sha256(Path(request.image)))
            stored = self.store.submit(spec, Path(request.image), output=request.output, owner=owner,
                                       max_pending=max_pending if owner is not None else None,
                                       files=spec.files_for(request), batch_id=batch_id, label=label)
            self._track(stored)
            self._refresh_from_store()
            self._condition.notify_all()
        return stored.id

    def cancel(self, job_id: str, viewer: Viewer | None = None) -> bool:
        """Stop a running job within one denoising step, or drop a queued one. False if unknown, hidden from
        ``viewer``, or done."""
        with self._condition:
            job = self._jobs.get(job_id)
            if job is None or job.snapshot.state.done or not sees(viewer, job.snapshot.owner):
                return False
            try:
                stored = self.store.cancel(job_id)
            except QueueError:
                return False
            if stored.state == JobState.CANCELLED:  # it was waiting: it ends at once, the jobs behind move up
                self._update(job, state=JobState.CANCELLED, queue_position=None,
                             stage_message="Stopped before it started.")
                self._refresh_from_store()
            else:  # run here, or by another process, which sees the stored request at its next step
                if job_id in self._running_ids():
                    job.cancel.cancel()
                self._update(job, stage_message="Stopping after the current step ...")
            self._condition.notify_all()
            return True

    def snapshot(self, job_id: str, viewer: Viewer | None = None) -> JobSnapshot:
        """The job's current snapshot; ``KeyError`` if unknown or hidden from ``viewer``."""
        with self._condition:
            return self._copy(self._visible_job(job_id, viewer))

    def wait_for_change(self, job_id: str, version: int, timeout: float = 1.0,
                        viewer: Viewer | None = None) -> JobSnapshot:
        """Block until the job's snapshot is newer than ``version`` or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                job = self._visible_job(job_id, viewer)
                remaining = deadline - time.monotonic()
                if job.snapshot.version != version or remaining <= 0:
                    return self._copy(job)
                self._condition.wait(remaining)

    def active_job_id(self, viewer: Viewer | None = None) -> str | None:
        """What a refreshed page reconnects to: the running job, else the first queued one, among those
        ``viewer`` may see."""
        with self._condition:
            queued = [job_id for job_id in self.queued_job_ids()  # not those stop() has shown as stopped
                      if job_id in self._jobs and self._jobs[job_id].snapshot.state == JobState.QUEUED]
            running_here = [job_id for job_id in self._running_ids() if job_id in self._jobs]  # may be deleted
            candidates = running_here + queued
            candidates += [job_id for job_id, job in self._jobs.items()  # run by another process
                           if job.snapshot.state == JobState.RUNNING and job_id not in running_here]
            return next((job_id for job_id in candidates if sees(viewer, self._jobs[job_id].snapshot.owner)), None)

    def queued_job_ids(self) -> list[str]:
        """The queued jobs' ids in the queue's order (the next to run first)."""
        return [stored.id for stored in self.store.list(states=(JobState.QUEUED,))]

    def _visible_job(self, job_id: str, viewer: Viewer | None) -> LiveJob:
        job = self._jobs.get(job_id)
        if job is None or not sees(viewer, job.snapshot.owner):
            raise KeyError(job_id)
        return job

    @staticmethod
    def _copy(job: LiveJob) -> JobSnapshot:
        return replace(job.snapshot, notices=list(job.snapshot.notices)).ticking()

    # Outputs ---------------------------------------------------------------------------------------------------

    def list_outputs(self, limit: int = 100, viewer: Viewer | None = None) -> list[OutputRecord]:
        """Finished videos that have a settings file and that ``viewer`` may see (None: all), newest first."""
        return list_outputs(self.output_dir, self.store.output_owners(), viewer, limit)

    def health(self) -> WorkerHealth:
        with self._condition:
            alive = [slot.thread is not None and slot.thread.is_alive() and not slot.retired for slot in self._slots]
            return replace(self._health, alive=any(alive), workers=self._worker_states())

    @property
    def worker_count(self) -> int:
        """How many jobs run at once: one per worker."""
        return len(self._slots)

    # Snapshots from the queue ----------------------------------------------------------------------------------

    def _update(self, job: LiveJob, **changes: Any) -> None:
        """Apply changes under the lock and wake every waiter."""
        for name, value in changes.items():
            setattr(job.snapshot, name, value)
        job.snapshot.version += 1
        self._condition.notify_all()

    def _track(self, stored: QueuedJob) -> LiveJob:
        """This process's live job for a stored one, made for a job it has not seen (queued by another process or
        before a restart) or has seen end before it was queued again; caller holds the lock. ``FramePackError``
        when the stored settings no longer make a request."""
        known = self._jobs.get(stored.id)
        if known is not None and not known.snapshot.state.done:
            return known
        job = LiveJob(stored.id, stored.request(), stored.owner)
        if known is not None:
            job.snapshot.version = known.snapshot.version + 1  # a page waiting on the ended attempt sees the change
        self._jobs[stored.id] = job
        return job

    def _refresh_from_store(self) -> None:
        """Make the snapshots tell what the queue says; caller holds the lock. Queued jobs get their place in the
        queue's order; jobs that left the queue elsewhere (run, ended or deleted by another process) their stored
        state, so every process reports the truth."""
        queued = self.store.list(states=(JobState.QUEUED,))
        place = 0
        for stored in queued:
            try:
                job = self._track(stored)
            except FramePackError as error:  # e.g. its stored image was deleted
                logger.warning("Queued job %s cannot run: %s", stored.id, error)
                self.store.reject(stored.id, error.message, error.hint)
                continue
            place += 1
            if (job.snapshot.state, job.snapshot.queue_position) != (JobState.QUEUED, place):
                self._update(job, state=JobState.QUEUED, queue_position=place,
                             stage_message=f"Waiting in the queue: position {place}")
        waiting = {stored.id for stored in queued}
        running_here = set(self._running_ids())
        for job_id, job in list(self._jobs.items()):
            if job.snapshot.state.done or job_id in running_here or job_id in waiting:
                continue
            try:
                stored = self.store.get(job_id)
            except QueueError:  # deleted by another process
                self._update(job, state=JobState.CANCELLED, queue_position=None,
                             stage_message="The job was deleted from the queue.")
                continue
            changes = stored_changes(job.snapshot, stored)
            if changes:
                self._update(job, **changes)

    def _forget_old_jobs(self) -> None:
        finished = [j for j, job in self._jobs.items() if job.snapshot.state.done]
        for job_id in finished[: max(0, len(finished) - self._max_finished)]:
            del self._jobs[job_id]
