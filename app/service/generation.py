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
import shutil
import tempfile
import threading
import time
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
    snapshot_dir,
    sweep_snapshot_dirs,
    write_png_atomically,
)
from app.service.queue_management import QueueManagementMixin, describe_error, fail_crashed_job, sees
from app.service.reroll import RerollMixin
from framepack_core.errors import FramePackError
from framepack_core.events import (
    EngineEvent,
    InputPrepared,
    JobCancelled,
    JobFailed,
    JobFinished,
    Notice,
)
from framepack_core.jobs.output_naming import output_base
from framepack_core.jobs.queue import JobQueue, QueuedJob, QueueError, QueueOwnership
from framepack_core.jobs.runner import QueueRunner
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

logger = logging.getLogger(__name__)

STORE_POLL_S = 2.0  # how often an idle worker looks for jobs queued by other processes
# After an error in the worker's own loop (not in a job: the queue's database, the disk), it waits this long
# before trying again, doubling up to the maximum, so a full disk or a locked database is not hammered.
WORKER_RETRY_FIRST_S = 0.5
WORKER_RETRY_MAX_S = 30.0


class GenerationService(QueueManagementMixin, RerollMixin):
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

        ``queue``: the persistent queue (``framepack_core.jobs.queue``), normally the output folder's. Jobs are
        stored in it and run in their job folders: pending jobs survive a restart, an interrupted job resumes
        from its last finished section, and jobs submitted by other processes (the CLI) run here too. One process
        at a time owns a queue and runs its jobs; while another one does, this service only submits and reports
        the stored state, and takes over when the other one stops. Without a queue the service keeps one of its
        own in a temporary folder, removed with the service: the same runner, but no job outlives the process.
        """
        if queue is None:
            self._temporary_queue_dir = tempfile.TemporaryDirectory(prefix="framepack-queue-")
            queue = JobQueue(Path(self._temporary_queue_dir.name))
        self.store = queue
        self._engine_factory = engine_factory
        self._runner: QueueRunner | None = None  # made with the engine, by the first job or the first estimate
        self._runner_lock = threading.Lock()
        self._idle_release_s = idle_release_s
        self._release_requested = False
        self._models_loaded = False
        self.output_dir = Path(output_dir)
        self.keep_intermediates = keep_intermediates
        self._max_finished = max_finished_jobs
        self._jobs: dict[str, LiveJob] = {}
        self._running: str | None = None
        self._condition = threading.Condition()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._ownership: QueueOwnership | None = None
        self._health = WorkerHealth(queue_note=queue.recovery_note)

    # Lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._condition:
            if self._worker is not None:
                return
            self._stopping = False
            self._take_ownership()
            self._refresh_from_store()
            self._worker = threading.Thread(target=self._work, name="framepack-worker", daemon=True)
            self._worker.start()

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
            running = self._jobs.get(self._running) if self._running else None
            if running is not None:
                running.cancel.cancel()
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
            if self._running is not None or self.store.count(states=(JobState.QUEUED,)):
                self._release_requested = True
                self._condition.notify_all()
                return "Memory will be freed when the queued jobs are done."
            if not self._models_loaded:
                return "No models are loaded; nothing to free."
            self._release_models()
        return "Freed the models' memory; the next job loads them again."

    def engine(self) -> FramePackEngine:
        """The engine the jobs run on, made now if no job has run yet (that loads no model): for estimates."""
        return self._ensure_runner().engine

    def _models_dir(self) -> Path | None:
        models = getattr(self.engine(), "models", None)  # None: a service made without an engine (tests)
        return models.source.models_dir if models is not None else None

    def _ensure_runner(self) -> QueueRunner:
        # Its own lock: the page may ask for the engine while the worker starts its first job.
        with self._runner_lock:
            if self._runner is None:
                self._runner = QueueRunner(self.store, self._engine_factory(), self.output_dir)
            return self._runner

    def _release_models(self) -> None:
        """Caller holds ``self._condition`` and no job is running, so the worker cannot use the models meanwhile."""
        if self._runner is not None:
            self._runner.engine.models.release_all()
        self._models_loaded = False
        self._release_requested = False
        logger.info("Released the models' memory")

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
                if job_id == self._running:
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
            candidates = ([self._running] if self._running in self._jobs else []) + queued  # may be deleted
            candidates += [job_id for job_id, job in self._jobs.items()  # run by another process
                           if job.snapshot.state == JobState.RUNNING and job_id != self._running]
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
            return replace(self._health, alive=self._worker is not None and self._worker.is_alive())

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
        for job_id, job in list(self._jobs.items()):
            if job.snapshot.state.done or job_id == self._running or job_id in waiting:
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

    # Worker ----------------------------------------------------------------------------------------------------

    def _work(self) -> None:
        """Run jobs until stopped. An error in the loop itself (the queue's database, the disk) is logged, shown
        in ``health()`` and retried with back-off: the worker never dies while the app runs."""
        failures = 0
        while True:
            try:
                claimed = self._wait_for_job()
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
            if claimed is None:
                return
            if failures:
                failures = 0
                with self._condition:
                    self._health.last_error = None
                    logger.info("The job worker recovered")
            job = self._jobs[claimed.id]
            try:
                self._run(claimed)
            except Exception as error:  # noqa: BLE001 - the worker must survive any job
                logger.exception("Job %s crashed the worker", claimed.id)
                fail_crashed_job(self.store, claimed.id, error)  # first: a watcher that sees "failed" may act
                with self._condition:
                    self._update(job, state=JobState.FAILED, error=f"{type(error).__name__}: {error}",
                                 error_hint="This is a bug; please report it with the log.")
            finally:
                with self._condition:
                    self._running = None
                    self._forget_old_jobs()
                    self._condition.notify_all()
                self._remove_work_dir(job)  # after a crash; normally already gone

    def _wait_for_job(self) -> QueuedJob | None:
        """Block until a job is claimed from the queue (marked running, returned) or the service stops (None)."""
        with self._condition:
            idle_since = time.monotonic()
            while not self._stopping:
                claimed = self._claim_next()
                if claimed is not None:
                    return claimed
                if self._models_loaded and self._release_requested:
                    self._release_models()
                timeout = STORE_POLL_S  # jobs may arrive from (or be run by) other processes
                if self._models_loaded and self._idle_release_s is not None:
                    left = idle_since + self._idle_release_s - time.monotonic()
                    if left <= 0:
                        self._release_models()
                        continue
                    timeout = min(timeout, left)
                self._condition.wait(timeout)
            return None

    def _claim_next(self) -> QueuedJob | None:
        """Claim the queue's next job to run here, when this process owns the queue; caller holds the lock."""
        if not self._take_ownership():
            self._refresh_from_store()
            return None
        claimed = self.store.claim_next()
        if claimed is None:
            self._refresh_from_store()
            return None
        try:
            job = self._track(claimed)
        except FramePackError as error:
            logger.warning("Queued job %s cannot run: %s", claimed.id, error)
            self.store.end(claimed.id, JobState.FAILED, error=error.message, hint=error.hint)
            return None
        self._running = claimed.id
        self._update(job, state=JobState.RUNNING, queue_position=None, started_at=time.time(),
                     stage_message="Starting ...")
        self._refresh_from_store()
        return claimed

    def _run(self, claimed: QueuedJob) -> None:
        job = self._jobs[claimed.id]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if not self._models_loaded:  # the first job, or the first after the memory was freed
            with self._condition:
                self._update(job, stage_message="Loading models ...")
        self._ensure_runner()
        self._models_loaded = True
        started = time.perf_counter()

        def open_snapshot_dir(video: Path) -> Path:
            job.work_dir = snapshot_dir(self.output_dir, output_base(video))
            return job.work_dir

        def on_event(named: QueuedJob, event: EngineEvent) -> None:
            if isinstance(event, (JobFinished, JobCancelled, JobFailed)):
                # Clean up before the job is seen as done: its terminal videos live in the output folder, and a
                # watcher that sees "finished" must also see a tidy folder.
                self._remove_work_dir(job)
            with self._condition:
                self._apply(job, event, output_base(named.output), started)

        # A job stopped because the app shuts down goes back to the queue, to resume at the next start.
        ended = self._runner.run_job(claimed, on_event, job.cancel, snapshot_dir=open_snapshot_dir,
                                     requeue_if_cancelled=lambda: self._stopping)
        if ended.state.done and not job.snapshot.state.done:  # the runner ended it without an event
            with self._condition:
                self._update(job, **stored_changes(job.snapshot, ended, run_here=True))

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
