"""One generation at a time per device, with a FIFO queue that browser tabs and API clients share.

The UI never talks to the engine directly: it submits a ``GenerationRequest`` here, then polls
``snapshot(job_id)`` (or blocks in ``wait_for_change``) to render progress. Jobs outlive the browser tab that
started them, so a refreshed page reconnects with ``active_job_id()``.

Per job the output folder gets the final mp4, the cropped input image and the video's sidecar JSON (see
``app.service.outputs``). Per-section snapshots for the live player go to a hidden folder removed when the job ends,
unless ``keep_intermediates`` is set.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.access import Viewer
from app.service.job_status import JobSnapshot, JobState, LiveJob, WorkerHealth, event_changes, stored_changes
from app.service.outputs import (
    INPUT_SUFFIX,
    OutputRecord,
    list_outputs,
    output_base,
    snapshot_dir,
    sweep_snapshot_dirs,
    write_png_atomically,
)
from app.service.queue_management import QueueManagementMixin, describe_error, fail_crashed_job, sees
from framepack_core.errors import FramePackError
from framepack_core.events import (
    InputPrepared,
    JobCancelled,
    JobFailed,
    JobFinished,
    Notice,
)
from framepack_core.jobs.output_naming import output_path
from framepack_core.jobs.queue import JobQueue, QueueError, QueueOwnership
from framepack_core.jobs.runner import record_event
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

logger = logging.getLogger(__name__)

STORE_POLL_S = 2.0  # how often an idle worker looks for jobs queued by other processes
# After an error in the worker's own loop (not in a job: the queue's database, the disk), it waits this long
# before trying again, doubling up to the maximum, so a full disk or a locked database is not hammered.
WORKER_RETRY_FIRST_S = 0.5
WORKER_RETRY_MAX_S = 30.0


class GenerationService(QueueManagementMixin):
    """Owns the engine and one worker thread; every public method is thread-safe.

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
    ) -> None:
        """``idle_release_s``: release the models' memory after this many seconds without a job (None: never).

        ``queue``: the persistent queue (``framepack_core.jobs.queue``). With it, jobs are stored in SQLite under the
        output folder and run in their job folders: pending jobs survive a restart, an interrupted job resumes
        from its last finished section, and jobs submitted by other processes (the CLI) run here too. One process
        at a time owns a queue and runs its jobs; while another one does, this service only submits and reports
        the stored state, and takes over when the other one stops. Without a queue the jobs live in memory only.
        """
        self.store = queue
        self._shutting_down = False
        self._engine_factory = engine_factory
        self._idle_release_s = idle_release_s
        self._release_requested = False
        self._models_loaded = False
        self._engine: FramePackEngine | None = None
        self.output_dir = Path(output_dir)
        self.keep_intermediates = keep_intermediates
        self._max_finished = max_finished_jobs
        self._jobs: dict[str, LiveJob] = {}
        self._queue: deque[str] = deque()
        self._running: str | None = None
        self._condition = threading.Condition()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._ownership: QueueOwnership | None = None
        self._health = WorkerHealth(queue_note=None if queue is None else queue.recovery_note)

    # Lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._condition:
            if self._worker is not None:
                return
            self._stopping = False
            self._shutting_down = False
            if self.store is not None:
                self._take_ownership()
                self._sync_pending()
            else:
                self._health.running_here = True
            self._worker = threading.Thread(target=self._work, name="framepack-worker", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel the running job, drop the queue and wait for the worker."""
        with self._condition:
            self._stopping = True
            self._shutting_down = True
            for job_id in list(self._queue):
                message = ("The app is shutting down; the job stays queued and runs when it starts again."
                           if self.store is not None else "The app is shutting down.")
                self._finish_unstarted(job_id, message)
            self._queue.clear()
            if self._running:
                self._jobs[self._running].cancel.cancel()
            self._condition.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)
        self._worker = None
        with self._condition:
            if self._ownership is not None:
                self._ownership.release()
                self._ownership = None
                self._health.running_here = False

    def _take_ownership(self) -> bool:
        """Become the process that runs this queue's jobs, if no other live process is; caller holds the lock."""
        assert self.store is not None
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
            if self._running is not None or self._queue:
                self._release_requested = True
                self._condition.notify_all()
                return "Memory will be freed when the queued jobs are done."
            if not self._models_loaded:
                return "No models are loaded; nothing to free."
            self._release_models()
        return "Freed the models' memory; the next job loads them again."

    def _release_models(self) -> None:
        """Caller holds ``self._condition`` and no job is running, so the worker cannot use the models meanwhile."""
        if self._engine is not None:
            self._engine.models.release_all()
        self._models_loaded = False
        self._release_requested = False
        logger.info("Released the models' memory")

    # Jobs ------------------------------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, owner: str | None = None, max_pending: int | None = None) -> str:
        """Queue a job; raises ``InvalidInputError`` for bad input before anything is queued. ``owner``: the
        login that submitted it. ``max_pending``: refuse (``QueueLimitError``) when ``owner`` already has that many
        jobs waiting."""
        from framepack_core.media.image_input import load_input_image

        request = request.validated()
        load_input_image(request.image)  # refuse broken images now, not when the job's turn comes
        with self._condition:
            if self._stopping:
                raise RuntimeError("The service is shutting down")
            if self.store is not None:
                spec = JobSpec.from_request(request, file_sha256(Path(request.image)))
                stored = self.store.submit(spec, Path(request.image), owner=owner,
                                           max_pending=max_pending if owner is not None else None)
                job_id = stored.id
                request = replace(request, image=stored.image)
            else:
                job_id = uuid.uuid4().hex[:12]  # as the queue's ids
            self._jobs[job_id] = LiveJob(job_id, request, owner)
            self._queue.append(job_id)
            self._renumber_queue()
            self._condition.notify_all()
        return job_id

    def cancel(self, job_id: str, viewer: Viewer | None = None) -> bool:
        """Stop a running job within one denoising step, or drop a queued one. False if unknown, hidden from
        ``viewer``, or done."""
        with self._condition:
            job = self._jobs.get(job_id)
            if job is None or job.snapshot.state.done or not sees(viewer, job.snapshot.owner):
                return False
            if self.store is not None:
                try:
                    self.store.cancel(job_id)
                except QueueError:
                    return False
            if job_id in self._queue:
                self._queue.remove(job_id)
                self._finish_unstarted(job_id, "Stopped before it started.")
                self._renumber_queue()
            elif job_id == self._running:
                job.cancel.cancel()
                self._update(job, stage_message="Stopping after the current step ...")
            else:  # run by another process: it sees the stored request at its next step
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
        """What a refreshed page reconnects to: the running job, else the oldest queued one, among those
        ``viewer`` may see."""
        with self._condition:
            candidates = ([self._running] if self._running else []) + list(self._queue)
            candidates += [job_id for job_id, job in self._jobs.items()  # run by another process
                           if job.snapshot.state == JobState.RUNNING and job_id != self._running]
            return next((job_id for job_id in candidates if sees(viewer, self._jobs[job_id].snapshot.owner)),
                        None)

    def queued_job_ids(self) -> list[str]:
        with self._condition:
            return list(self._queue)

    def _visible_job(self, job_id: str, viewer: Viewer | None) -> LiveJob:
        job = self._jobs.get(job_id)
        if job is None or not sees(viewer, job.snapshot.owner):
            raise KeyError(job_id)
        return job

    @staticmethod
    def _copy(job: LiveJob) -> JobSnapshot:
        return replace(job.snapshot, notices=list(job.snapshot.notices))

    # Outputs ---------------------------------------------------------------------------------------------------

    def list_outputs(self, limit: int = 100, viewer: Viewer | None = None) -> list[OutputRecord]:
        """Finished videos that have a settings file and that ``viewer`` may see (None: all), newest first."""
        owners = {} if self.store is None else self.store.output_owners()
        return list_outputs(self.output_dir, owners, viewer, limit)

    def health(self) -> WorkerHealth:
        with self._condition:
            return replace(self._health, alive=self._worker is not None and self._worker.is_alive())

    # Worker ----------------------------------------------------------------------------------------------------

    def _renumber_queue(self) -> None:
        for position, job_id in enumerate(self._queue, start=1):
            self._update(self._jobs[job_id], queue_position=position,
                         stage_message=f"Waiting in the queue: position {position}")

    def _update(self, job: LiveJob, **changes: Any) -> None:
        """Apply changes under the lock and wake every waiter."""
        for name, value in changes.items():
            setattr(job.snapshot, name, value)
        job.snapshot.version += 1
        self._condition.notify_all()

    def _finish_unstarted(self, job_id: str, message: str) -> None:
        self._update(self._jobs[job_id], state=JobState.CANCELLED, queue_position=None, stage_message=message)

    def _work(self) -> None:
        """Run jobs until stopped. An error in the loop itself (the queue's database, the disk) is logged, shown
        in ``health()`` and retried with back-off: the worker never dies while the app runs."""
        failures = 0
        while True:
            try:
                job = self._wait_for_job()
            except Exception as error:  # noqa: BLE001 - see the docstring
                failures += 1
                delay = min(WORKER_RETRY_MAX_S, WORKER_RETRY_FIRST_S * 2 ** (failures - 1))
                logger.exception("The job worker hit an error; retrying in %.1f s", delay)
                with self._condition:
                    self._health.last_error = describe_error(error)
                    self._health.last_error_at = time.time()
                    self._condition.wait(delay)  # stop() wakes it
                    if self._stopping:
                        return
                continue
            if job is None:
                return
            if failures:
                failures = 0
                with self._condition:
                    self._health.last_error = None
                    logger.info("The job worker recovered")
            try:
                self._run(job)
            except Exception as error:  # noqa: BLE001 - the worker must survive any job
                logger.exception("Job %s crashed the worker", job.snapshot.job_id)
                fail_crashed_job(self.store, job.snapshot.job_id, error)  # first: a watcher that sees "failed" may act
                with self._condition:
                    self._update(job, state=JobState.FAILED, error=f"{type(error).__name__}: {error}",
                                 error_hint="This is a bug; please report it with the log.")
            finally:
                with self._condition:
                    self._running = None
                    self._forget_old_jobs()
                    self._condition.notify_all()
                self._remove_work_dir(job)  # after a crash; normally already gone

    def _wait_for_job(self) -> LiveJob | None:
        """Block until there is a job to run (marked running, returned) or the service stops (None)."""
        with self._condition:
            idle_since = time.monotonic()
            while not self._stopping:
                job_id = self._next_job()
                if job_id is not None:
                    break
                if self._models_loaded and self._release_requested:
                    self._release_models()
                timeout = None
                if self._models_loaded and self._idle_release_s is not None:
                    timeout = idle_since + self._idle_release_s - time.monotonic()
                    if timeout <= 0:
                        self._release_models()
                        continue
                if self.store is not None:  # jobs may arrive from (or be run by) other processes
                    timeout = STORE_POLL_S if timeout is None else min(timeout, STORE_POLL_S)
                self._condition.wait(timeout)
            if self._stopping:
                return None
            self._running = job_id
            job = self._jobs[job_id]
            self._update(job, state=JobState.RUNNING, queue_position=None, started_at=time.time(),
                         stage_message="Starting ...")
            self._renumber_queue()
            return job

    def _next_job(self) -> str | None:
        """The job to run next, taken off the queue (claimed in the store when there is one); caller holds the
        lock."""
        if self.store is None:
            return self._queue.popleft() if self._queue else None
        if not self._take_ownership():
            self._sync_pending()
            self._sync_from_store()
            return None
        claimed = self.store.claim_next()
        if claimed is None:
            self._sync_pending()
            self._sync_from_store()
            return None
        if claimed.id not in self._jobs:  # submitted by another process, or before a restart
            self._jobs[claimed.id] = LiveJob(claimed.id, claimed.spec.request(claimed.image, output=claimed.output),
                                          claimed.owner)
        self._sync_pending()  # the claimed job is no longer pending: this takes it off the in-memory queue
        return claimed.id

    def _sync_pending(self) -> None:
        """Make the in-memory queue the store's pending jobs, in the store's order; caller holds the lock."""
        assert self.store is not None
        pending = self.store.list(states=(JobState.QUEUED,))
        for stored in pending:
            if stored.id not in self._jobs:
                try:
                    request = stored.spec.request(stored.image, output=stored.output)
                except FramePackError as error:  # e.g. its stored image was deleted
                    logger.warning("Queued job %s cannot run: %s", stored.id, error)
                    self.store.reject(stored.id, error.message, error.hint)
                    continue
                self._jobs[stored.id] = LiveJob(stored.id, request, stored.owner)
        ids = [stored.id for stored in pending if stored.id in self._jobs]
        if ids != list(self._queue):
            self._queue = deque(ids)
            self._renumber_queue()

    def _sync_from_store(self) -> None:
        """Jobs this process knows but does not run (another process runs them, or ran them): their snapshots
        follow the stored state, so every process reports the truth. Caller holds the lock."""
        assert self.store is not None
        for job_id, job in list(self._jobs.items()):
            if job.snapshot.state.done or job_id == self._running or job_id in self._queue:
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

    def _run(self, job: LiveJob) -> None:
        request = job.snapshot.request
        job_id = job.snapshot.job_id
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if request.output is not None:  # a stored job that already has its name (it is being resumed)
            output = Path(request.output)
            base = output_base(output)
        else:
            output = output_path(self.output_dir, seed=request.seed, job_id=job_id)
            base = output_base(output)
            if self.store is not None:
                self.store.set_output(job_id, output)
        job.work_dir = snapshot_dir(self.output_dir, base)
        request = replace(request, output=output)
        job_dir = None if self.store is None else self.store.job_dir(job_id)
        if self._engine is None:
            with self._condition:
                self._update(job, stage_message="Loading models (first job only) ...")
            self._engine = self._engine_factory()
        self._models_loaded = True
        started = time.perf_counter()
        for event in self._engine.generate(request, cancel=job.cancel, job_id=job_id, snapshot_dir=job.work_dir,
                                           job_dir=job_dir):
            if self.store is not None:
                # A job stopped because the app shuts down goes back to the queue, to resume at the next start.
                record_event(self.store, job_id, event, job.cancel, requeue_if_cancelled=self._shutting_down)
            if isinstance(event, (JobFinished, JobCancelled, JobFailed)):
                # Clean up before the job is seen as done: its terminal videos live in the output folder, and a
                # watcher that sees "finished" must also see a tidy folder.
                self._remove_work_dir(job)
            with self._condition:
                self._apply(job, event, base, started)

    def _remove_work_dir(self, job: LiveJob) -> None:
        if job.work_dir is not None and not self.keep_intermediates:
            shutil.rmtree(job.work_dir, ignore_errors=True)

    def _apply(self, job: LiveJob, event: object, base: str, started: float) -> None:
        if isinstance(event, InputPrepared):  # the cropped input image, kept beside the video
            image_path = self.output_dir / f"{base}{INPUT_SUFFIX}"
            write_png_atomically(event.image, image_path)
            self._update(job, input_image=image_path, total_sections=event.total_sections,
                         video_frames=event.video_frames, elapsed_s=time.perf_counter() - started)
            return
        if isinstance(event, Notice):
            job.snapshot.notices.append(event.message)
        self._update(job, **event_changes(event, time.perf_counter() - started))
