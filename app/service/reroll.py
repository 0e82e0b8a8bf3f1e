"""``GenerationService.reroll``: queue a job re-rolled from a section as a new job whose folder starts from the old
job's state (``framepack_core.jobs.reroll``); the page's "Re-roll from here" and ``POST /jobs/{id}/reroll`` call it.

A mixin of ``GenerationService``, like ``queue_management``: a job the viewer may not see is answered as an unknown
one (``KeyError``, as ``snapshot`` does), so ids of other users' jobs are not revealed.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import uuid
from pathlib import Path

from app.access import Viewer
from app.service.job_status import LiveJob
from app.service.queue_management import sees
from framepack_core.errors import InvalidInputError
from framepack_core.jobs.output_naming import output_path, reroll_output_path
from framepack_core.jobs.queue import JobQueue, JobState, QueueError
from framepack_core.jobs.reroll import prepare_reroll, record_output
from framepack_core.request import MAX_SEED


class RerollMixin:
    """Needs ``store``, ``output_dir``, ``_condition``, ``_jobs``, ``_track`` and ``_refresh_from_store`` from the
    class it is mixed into."""

    store: JobQueue
    output_dir: Path
    _condition: threading.Condition
    _jobs: dict[str, LiveJob]

    def reroll(self, job_id: str, from_section: int, *, seed: int | None = None, prompt: str | None = None,
               viewer: Viewer | None = None, max_pending: int | None = None) -> str:
        """Queue ``job_id`` re-rolled from ``from_section`` (1-based, generation order) with ``seed`` (None: a new
        random one) and, if given, ``prompt``; returns the new job's id. Its sections before ``from_section`` are
        the old job's, bit-identical; the old job, its folder and its video stay as they are. ``KeyError`` for a
        job unknown or hidden from ``viewer``; ``InvalidInputError`` (``reroll_from``, ``job_dir``, ``seed``,
        ``prompt``) for a section it does not have or has not finished, or a job that is running. ``max_pending``:
        refuse (``QueueLimitError``) when the job's owner already has that many jobs waiting, as ``submit`` does."""
        with self._condition:
            try:
                old = self.store.get(job_id)
            except QueueError:
                raise KeyError(job_id) from None
            if not sees(viewer, old.owner):
                raise KeyError(job_id)
            if old.state in (JobState.QUEUED, JobState.RUNNING):
                raise InvalidInputError("job_dir", f"job {job_id} is {old.state.value}",
                                        "Re-roll it once it has finished, failed or been cancelled.")
            seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
            new_id = uuid.uuid4().hex[:12]
            target = self.store.job_dir(new_id)
            try:
                job = prepare_reroll(self.store.job_dir(job_id), target, from_section, seed, prompt)
                request = old.request()
                previous = old.output or output_path(self.output_dir, seed=request.seed, job_id=job_id)
                in_use = {str(row.output) for row in self.store.list() if row.output is not None}
                output = reroll_output_path(previous, len(job.spec.settings["rerolls"]) + 1,
                                            lambda path: path.exists() or str(path) in in_use)
                record_output(target, output)
                stored = self.store.submit(job.spec, request.image, output=output, owner=old.owner,
                                           files=old.input_files(), job_id=new_id,
                                           max_pending=max_pending if old.owner is not None else None)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            self._track(stored)
            self._refresh_from_store()
            self._condition.notify_all()
        return stored.id
