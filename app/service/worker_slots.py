"""The service's workers: one thread per worker claims the queue's next job and runs it through the one runner.

A mixin of ``GenerationService``. Without workers the service has one slot whose engine lives in this process
(the default: one job at a time). With workers (``framepack_core.workers``: a process per local device, or Ray
actors) it has a slot per worker, so as many jobs run side by side; each job's snapshot names its worker.

A worker that dies mid-job gives its job back to the front of the queue (``QueueRunner.run_job``), where the next
free worker resumes it from its last finished section. The lost worker waits before it claims again, longer each
time in a row (``framepack_core.workers.pool.lost_wait_s``), and after ``MAX_LOSSES_IN_A_ROW`` takes no more jobs.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.service.job_status import JobState, LiveJob, WorkerHealth, event_changes, stored_changes
from app.service.outputs import INPUT_SUFFIX, snapshot_dir, write_png_atomically
from app.service.queue_management import describe_error, fail_crashed_job
from framepack_core.errors import FramePackError
from framepack_core.events import (
    EngineEvent,
    InputPrepared,
    JobCancelled,
    JobFailed,
    JobFinished,
    Notice,
    WorkerLost,
)
from framepack_core.jobs.output_naming import output_base
from framepack_core.jobs.queue import JobQueue, QueuedJob
from framepack_core.jobs.runner import QueueRunner
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.workers.pool import MAX_LOSSES_IN_A_ROW, lost_wait_s
from framepack_core.workers.remote import Worker

logger = logging.getLogger(__name__)

STORE_POLL_S = 2.0  # how often an idle worker looks for jobs queued by other processes
# After an error in the worker's own loop (not in a job: the queue's database, the disk), it waits this long
# before trying again, doubling up to the maximum, so a full disk or a locked database is not hammered.
WORKER_RETRY_FIRST_S = 0.5
WORKER_RETRY_MAX_S = 30.0


@dataclass(eq=False)
class WorkerSlot:
    """One worker as the service runs it. ``worker`` None: the engine ``GenerationService`` makes in this
    process."""

    worker: Worker | None = None
    runner: QueueRunner | None = None  # made with the engine, by the first job or the first estimate
    running: str | None = None  # the job it runs now
    models_loaded: bool = False
    releasing: bool = False  # its models are being released (outside the lock): it claims no job meanwhile
    waiting: bool = False  # its thread waits for a job (not running one, not pausing after a loss)
    losses: int = 0  # times in a row its worker was lost mid-job
    retired: bool = False  # lost too often: it takes no more jobs
    thread: threading.Thread | None = None

    @property
    def name(self) -> str | None:
        return None if self.worker is None else self.worker.name


class WorkerSlotsMixin:
    """Needs ``store``, ``output_dir``, ``keep_intermediates``, ``_slots``, ``_jobs``, ``_condition``,
    ``_stopping``, ``_health``, ``_idle_release_s``, ``_release_requested``, ``_engine_factory``, ``_update``,
    ``_track``, ``_refresh_from_store``, ``_take_ownership`` and ``_forget_old_jobs`` from the class it is mixed
    into."""

    store: JobQueue
    output_dir: Path
    keep_intermediates: bool
    _slots: list[WorkerSlot]
    _jobs: dict[str, LiveJob]
    _condition: threading.Condition
    _stopping: bool
    _health: WorkerHealth
    _idle_release_s: float | None
    _release_requested: bool
    _engine_factory: Callable[[], FramePackEngine]
    _runner_lock: threading.Lock

    def _running_ids(self) -> list[str]:
        """The jobs this process's workers run now, in the workers' order; caller holds the lock."""
        return [slot.running for slot in self._slots if slot.running is not None]

    def _ensure_runner(self, slot: WorkerSlot) -> QueueRunner:
        # Its own lock: the page may ask for the engine while the worker starts its first job.
        with self._runner_lock:
            if slot.runner is None:
                engine = self._engine_factory() if slot.worker is None else slot.worker
                slot.runner = QueueRunner(self.store, engine, self.output_dir, worker_name=slot.name)
            return slot.runner

    def _mark_for_release(self, slots: list[WorkerSlot]) -> list[WorkerSlot]:
        """Of ``slots``, those with models loaded and no job, marked as releasing so they claim no job until
        ``_release_marked`` is done with them; caller holds ``self._condition``."""
        chosen = [slot for slot in slots if slot.models_loaded and slot.running is None and not slot.releasing]
        for slot in chosen:
            slot.releasing = True
        return chosen

    def _release_marked(self, slots: list[WorkerSlot]) -> None:
        """Release the models of ``slots`` (marked by ``_mark_for_release``). Caller does not hold the lock: a
        worker process takes up to seconds to stop, and the page's reads must not wait for it."""
        for slot in slots:
            try:
                if slot.runner is not None:
                    if slot.worker is None:
                        slot.runner.engine.models.release_all()
                    else:
                        slot.worker.release()
                logger.info("Released the models' memory%s", f" of worker {slot.name}" if slot.name else "")
            finally:
                with self._condition:
                    slot.models_loaded = False
                    slot.releasing = False
                    self._condition.notify_all()

    def _worker_states(self) -> list[dict[str, Any]]:
        """Each worker's name, the job it runs and whether it still takes jobs; caller holds the lock."""
        return [{"name": slot.name, "job_id": slot.running, "retired": slot.retired}
                for slot in self._slots if slot.worker is not None]

    # The loop of each worker's thread -----------------------------------------------------------------------

    def _work(self, slot: WorkerSlot) -> None:
        """Run jobs until stopped. An error in the loop itself (the queue's database, the disk) is logged, shown
        in ``health()`` and retried with back-off: the worker never dies while the app runs."""
        failures = 0
        while True:
            try:
                claimed = self._wait_for_job(slot)
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
            ended = None
            try:
                ended = self._run(claimed, slot)
            except Exception as error:  # noqa: BLE001 - the worker must survive any job
                logger.exception("Job %s crashed the worker", claimed.id)
                fail_crashed_job(self.store, claimed.id, error)  # first: a watcher that sees "failed" may act
                with self._condition:
                    self._update(job, state=JobState.FAILED, error=f"{type(error).__name__}: {error}",
                                 error_hint="This is a bug; please report it with the log.")
            finally:
                with self._condition:
                    slot.running = None
                    self._forget_old_jobs()
                    self._condition.notify_all()
                self._remove_work_dir(job)  # after a crash; normally already gone
            lost = ended is not None and ended.state == JobState.QUEUED and not self._stopping
            if lost and not self._wait_after_loss(slot):
                return

    def _wait_after_loss(self, slot: WorkerSlot) -> bool:
        """After ``slot``'s worker died mid-job: False when it should take no more jobs (lost too often in a row,
        or the service stops), else True once it has waited its turn."""
        with self._condition:
            slot.losses += 1
            slot.models_loaded = False
            if slot.losses >= MAX_LOSSES_IN_A_ROW:
                slot.retired = True
                logger.error("Worker %s was lost %d times in a row; it takes no more jobs until the app restarts",
                             slot.name, slot.losses)
                self._condition.notify_all()
                return False
            deadline = time.monotonic() + lost_wait_s(slot.losses)
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                self._condition.wait(left)
            return not self._stopping

    def _wait_for_job(self, slot: WorkerSlot) -> QueuedJob | None:
        """Block until a job is claimed from the queue (marked running, returned) or the service stops (None).
        Meanwhile release the models when asked to or after the idle time, outside the lock."""
        idle_since = time.monotonic()
        while True:
            with self._condition:
                slot.waiting = True
                try:
                    releasing = self._next_release(slot, idle_since)
                    while not releasing:
                        if self._stopping:
                            return None
                        if self._may_claim(slot):
                            claimed = self._claim_next(slot)
                            if claimed is not None:
                                self._condition.notify_all()  # a worker after this one may take the next job
                                return claimed
                        releasing = self._next_release(slot, idle_since)
                        if not releasing:
                            timeout = STORE_POLL_S  # jobs may arrive from (or be run by) other processes
                            if slot.models_loaded and self._idle_release_s is not None:
                                timeout = max(0.0, min(timeout, idle_since + self._idle_release_s - time.monotonic()))
                            self._condition.wait(timeout)
                finally:
                    slot.waiting = False
            self._release_marked(releasing)

    def _may_claim(self, slot: WorkerSlot) -> bool:
        """Whether ``slot`` may claim the next job: not while another thread releases its models, nor while a
        worker listed before it waits too (that one takes it: jobs go to the first free worker, cuda:0 before
        cuda:1, whichever thread the news wakes first); caller holds ``self._condition``."""
        if slot.releasing:
            return False
        earlier = self._slots[:self._slots.index(slot)]
        return not any(other.waiting and not other.releasing for other in earlier)

    def _next_release(self, slot: WorkerSlot, idle_since: float) -> list[WorkerSlot]:
        """The slots whose models to release now (marked): every loaded one once a requested release is due (no
        job runs), else ``slot`` once it has been idle long enough; caller holds ``self._condition``."""
        if self._release_requested and not self._running_ids():
            self._release_requested = False
            return self._mark_for_release(self._slots)
        if (slot.models_loaded and self._idle_release_s is not None
                and time.monotonic() >= idle_since + self._idle_release_s):
            return self._mark_for_release([slot])
        return []

    def _claim_next(self, slot: WorkerSlot) -> QueuedJob | None:
        """Claim the queue's next job for ``slot``, when this process owns the queue; caller holds the lock."""
        if not self._take_ownership():
            self._refresh_from_store()
            return None
        claimed = self.store.claim_next(slot.name)
        if claimed is None:
            self._refresh_from_store()
            return None
        try:
            job = self._track(claimed)
        except FramePackError as error:
            logger.warning("Queued job %s cannot run: %s", claimed.id, error)
            self.store.end(claimed.id, JobState.FAILED, error=error.message, hint=error.hint)
            return None
        slot.running = claimed.id
        self._update(job, state=JobState.RUNNING, queue_position=None, started_at=time.time(), worker=slot.name,
                     stage_message="Starting ..." + (f" on worker {slot.name}" if slot.name else ""))
        self._refresh_from_store()
        return claimed

    def _run(self, claimed: QueuedJob, slot: WorkerSlot) -> QueuedJob:
        job = self._jobs[claimed.id]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if not slot.models_loaded:  # the first job, or the first after the memory was freed
            with self._condition:
                self._update(job, stage_message="Loading models ...")
        runner = self._ensure_runner(slot)
        slot.models_loaded = True
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
        ended = runner.run_job(claimed, on_event, job.cancel, snapshot_dir=open_snapshot_dir,
                               requeue_if_cancelled=lambda: self._stopping)
        if ended.state.done:
            with self._condition:
                slot.losses = 0
                if not job.snapshot.state.done:  # the runner ended it without an event
                    self._update(job, **stored_changes(job.snapshot, ended, run_here=True))
        return ended

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
        if isinstance(event, WorkerLost):  # the job is queued again; the store gives its place
            job.snapshot.notices.append(f"{event.message} The job resumed from its last finished section.")
            self._update(job, state=JobState.QUEUED, worker=None, step=None, eta_s=None,
                         stage_message=f"{event.message} It resumes from its last finished section on the next "
                                       "free worker.")
            return
        if isinstance(event, Notice):
            job.snapshot.notices.append(event.message)
        self._update(job, **event_changes(event, time.perf_counter() - started))

