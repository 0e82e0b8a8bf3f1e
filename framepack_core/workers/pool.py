"""Several workers on one queue: a thread per worker claims the next job (the queue's atomic claim keeps two
from taking the same one) and runs it through the one runner, so jobs run side by side, one per worker.

A worker that dies mid-job puts the job back at the front of the queue (``QueueRunner.run_job``); a free worker
resumes it from its last finished section. The lost worker waits before it claims again, longer each time it is
lost in a row, so a worker that cannot come back does not take jobs only to give them back; after
``MAX_LOSSES_IN_A_ROW`` it gives up and the others carry on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from framepack_core.jobs.queue import JobQueue, JobState, QueuedJob
from framepack_core.jobs.runner import EventCallback, QueueRunner
from framepack_core.workers.remote import Worker

logger = logging.getLogger(__name__)

MAX_LOSSES_IN_A_ROW = 3
LOST_WAIT_FIRST_S = 1.0  # doubled for each loss in a row
IDLE_POLL_S = 0.5  # how often an idle worker looks again while another one may still give a job back


def lost_wait_s(losses_in_a_row: int) -> float:
    """How long a worker lost that many times in a row waits before it claims a job again."""
    return LOST_WAIT_FIRST_S * 2 ** max(0, losses_in_a_row - 1)


class WorkerPool:
    """Runs the queue's pending jobs on ``workers``, one job per worker at a time."""

    def __init__(self, queue: JobQueue, workers: Sequence[Worker], output_dir: Path) -> None:
        if not workers:
            raise ValueError("a pool needs at least one worker")
        self.queue = queue
        self.runners = [QueueRunner(queue, worker, output_dir, worker_name=worker.name) for worker in workers]
        self._busy = 0
        self._condition = threading.Condition()

    def run_pending(self, on_event: EventCallback | None = None, should_stop: Callable[[], bool] = lambda: False
                    ) -> list[QueuedJob]:
        """Requeue interrupted jobs, then run pending jobs until none is left and no worker may give one back
        (or ``should_stop``). Returns each job's final row, in the order they ended. The pool owns the queue
        meanwhile; ``QueueBusyError`` (naming it) when another process does."""
        done: list[QueuedJob] = []
        with self.queue.require_ownership():
            for job_id in self.queue.requeue_interrupted():
                logger.info("Job %s was interrupted; it resumes from its last finished section", job_id)
            threads = [threading.Thread(target=self._serve, args=(runner, on_event, should_stop, done),
                                        name=f"framepack-pool-{runner.worker_name}", daemon=True)
                       for runner in self.runners]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        return done

    def close(self) -> None:
        for runner in self.runners:
            runner.engine.close()

    def _serve(self, runner: QueueRunner, on_event: EventCallback | None, should_stop: Callable[[], bool],
               done: list[QueuedJob]) -> None:
        losses = 0
        while not should_stop():
            with self._condition:
                job = self.queue.claim_next(runner.worker_name)
                if job is None:
                    if self._busy == 0:  # nothing queued, and nobody running a job that may come back
                        self._condition.notify_all()
                        return
                    self._condition.wait(IDLE_POLL_S)
                    continue
                self._busy += 1
            try:
                ended = runner.run_job(job, on_event)
            finally:
                with self._condition:
                    self._busy -= 1
                    self._condition.notify_all()
            if ended.state == JobState.QUEUED:  # its worker was lost; the job went back to the queue
                losses += 1
                if losses >= MAX_LOSSES_IN_A_ROW:
                    logger.error("Worker %s was lost %d times in a row; it takes no more jobs", runner.worker_name,
                                 losses)
                    return
                time.sleep(lost_wait_s(losses))
                continue
            losses = 0
            with self._condition:
                done.append(ended)
