"""The persistent job queue: SQLite in the output folder, shared by the app, the CLI and the HTTP API.

Layout under the queue folder (``<output folder>/.queue`` by default)::

    queue.sqlite3        one row per job: its spec, state, place in the queue, progress and result
    images/<sha256>.ext  the input files (start image, end image, keyframes, a clip to extend), stored once by
                         content
    jobs/<id>/           each job's folder (``framepack_core.jobs.checkpoint``): section checkpoints while it runs
    worker.lock, .json   held by the one process that runs the jobs, and who it is (``queue_ownership``)
    .open.lock           held while a process checks and migrates the database file (``queue_database``)

Every state change is one SQLite transaction whose ``UPDATE`` names the state it expects, so two workers can never
claim the same job, and a cancel that races a finish has exactly one outcome. A job whose worker died (a crash, a
kill -9, a reboot) is still marked running; ``requeue_interrupted`` puts it back at the front of the queue, and
it resumes from its last finished section because its job folder kept the checkpoints. A job is known to be
orphaned when its folder's lock is free: a running worker holds it.

Faults stay local. A row that cannot be read back (malformed JSON, an unknown state, bytes that are not UTF-8) is
left out of listings and reported by ``damaged`` instead, so one bad row never breaks a listing; it can be deleted.
A database file that is not a database any more is moved aside and a fresh queue started
(``framepack_core.jobs.queue_database``). A full disk is a ``DiskFullError``. Only one process at a time runs the
queue's jobs (``framepack_core.jobs.queue_ownership``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from framepack_core.errors import DiskFullError, FramePackError, InvalidInputError
from framepack_core.files import atomic_path
from framepack_core.jobs import queue_ownership
from framepack_core.jobs.output_naming import output_base
from framepack_core.jobs.queue_database import (
    ClosingConnection,
    connect,
    disk_full_as_error,
    is_disk_full,
    open_database,
)
from framepack_core.jobs.queue_ownership import QueueOwnership
from framepack_core.jobs.queue_rows import (
    PARTIAL_SUFFIX,
    DamagedJob,
    DamagedRow,
    JobState,
    QueuedJob,
    final_and_partial,
    keep_partial,
    read_job,
)
from framepack_core.jobs.spec import JobSpec, file_sha256

__all__ = ["QUEUE_FOLDER", "DamagedJob", "JobQueue", "JobState", "QueueBusyError", "QueueError", "QueueLimitError",
           "QueueOwnership", "QueuedJob"]

QUEUE_FOLDER = ".queue"


class QueueError(FramePackError):
    """A queue operation that does not apply to the job as it is (unknown id, wrong state, a damaged row)."""


class QueueLimitError(QueueError):
    """A submit refused because its owner already has as many pending jobs as one user may have."""


class QueueBusyError(QueueError):
    """Another process owns the queue (runs its jobs), so this one may not start running them too."""


class JobQueue:
    """The queue in ``root`` (created if missing). Thread-safe: every call opens its own connection.

    ``recovery_note`` is set when opening found the database damaged and moved it aside: it names the moved file
    and what to do, for the app to show."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            (self.root / "images").mkdir(parents=True, exist_ok=True)
            (self.root / "jobs").mkdir(exist_ok=True)
        except OSError as error:
            if is_disk_full(error):
                raise DiskFullError("the job queue's folder", str(self.root)) from error
            raise QueueError(f"Cannot create the job queue in {self.root}: {error.strerror or error}",
                             "Choose an output folder you can write to.") from error
        self.database = self.root / "queue.sqlite3"
        try:
            self.recovery_note: str | None = open_database(self.database)
        except (sqlite3.Error, OSError) as error:
            raise QueueError(f"Cannot open the job queue's database {self.database}: {error}",
                             "Check that the output folder is on a working drive you can write to.") from error

    @classmethod
    def for_output_dir(cls, output_dir: Path) -> JobQueue:
        return cls(Path(output_dir) / QUEUE_FOLDER)

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    # Reading -------------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> QueuedJob:
        """The job, or ``QueueError`` for an unknown id or a damaged row (its hint says to delete it)."""
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(f"There is no job {job_id!r} in the queue.", "List the jobs to see their ids.")
        return _job_or_error(row)

    def list(self, *, owner: str | None = None, states: tuple[JobState, ...] | None = None,
             limit: int | None = None, offset: int = 0) -> list[QueuedJob]:
        """Running first, then pending in queue order, then ended jobs, newest first; damaged rows left out (see
        ``damaged``). ``offset`` and ``limit`` page through that list."""
        if offset < 0 or (limit is not None and limit < 0):
            raise ValueError(f"offset and limit must not be negative (got {offset}, {limit})")
        readable = (job for job in self._rows(owner, states) if isinstance(job, QueuedJob))
        return list(itertools.islice(readable, offset, None if limit is None else offset + limit))

    def count(self, *, owner: str | None = None, states: tuple[JobState, ...] | None = None) -> int:
        """How many jobs ``list`` would return without a limit."""
        return sum(1 for job in self._rows(owner, states) if isinstance(job, QueuedJob))

    def rows(self, *, owner: str | None = None) -> list[QueuedJob | DamagedJob]:
        """Every job and damaged row in listing order, read in one pass (a listing that shows both reads once)."""
        return list(self._rows(owner, None))

    def damaged(self, owner: str | None = None) -> list[DamagedJob]:
        """The rows that cannot be read back as jobs, in listing order; each can be deleted."""
        return [job for job in self._rows(owner, None) if isinstance(job, DamagedJob)]

    def pending_position(self, job_id: str) -> int | None:
        """1-based place among the pending jobs, or None when the job is not pending."""
        ids = [job.id for job in self.list(states=(JobState.QUEUED,))]
        return ids.index(job_id) + 1 if job_id in ids else None

    def take_ownership(self) -> QueueOwnership | None:
        """Become the process that runs this queue's jobs; None when another live process already is."""
        return queue_ownership.take_ownership(self.root)

    def owner_description(self) -> str | None:
        """Which process runs this queue's jobs ("process 1234 on host X: ... since 10:31"), None if none does."""
        return queue_ownership.owner_description(self.root)

    def require_ownership(self) -> QueueOwnership:
        """``take_ownership``, or ``QueueBusyError`` naming the process that owns the queue."""
        ownership = self.take_ownership()
        if ownership is None:
            holder = self.owner_description() or "another process, which has just stopped"
            raise QueueBusyError(f"Another process is already running this queue's jobs: {holder}.",
                                 "Let it run them (jobs submitted to this output folder run there), or stop it "
                                 "and try again.")
        return ownership

    # Changing ------------------------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, image: Path, *, output: Path | None = None, owner: str | None = None,
               max_pending: int | None = None, files: Mapping[str, Path] | None = None,
               job_id: str | None = None, batch_id: str | None = None, label: str | None = None) -> QueuedJob:
        """Add a job at the end of the queue. ``image`` must be the spec's image (its SHA-256 is checked), and
        ``files`` maps the SHA-256 of each of the spec's other input files to its path; a copy of each is kept in
        the queue, so the originals may be moved or deleted afterwards. With an ``owner`` and a ``max_pending``,
        an owner who already has that many pending jobs is refused (``QueueLimitError``). ``job_id``: one chosen
        beforehand (a re-roll prepares its job folder first), else a new one. ``batch_id`` and ``label``: the
        batch it belongs to and its name there (``framepack_core.jobs.batch``)."""
        spec.check_image(Path(image))
        spec.request(Path(image), files=files)  # every input file is there
        limited = owner is not None and max_pending is not None
        if limited:  # refuse before storing the image; the count that decides is the one in the transaction
            with self._connect() as connection:
                _refuse_over_limit(connection, owner, max_pending)
        stored = self._store_image(Path(image), spec.image_sha256)
        for sha256 in spec.input_sha256s():
            assert files is not None
            if file_sha256(Path(files[sha256])) != sha256:
                raise InvalidInputError("inputs", f"{files[sha256]} changed since its job was described",
                                        "Submit the job again.")
            self._store_image(Path(files[sha256]), sha256)
        job_id = job_id or uuid.uuid4().hex[:12]
        with self._transaction() as connection:
            if limited:
                _refuse_over_limit(connection, owner, max_pending)
            last = connection.execute("SELECT MAX(position) FROM jobs WHERE state = 'queued'").fetchone()[0]
            connection.execute(
                "INSERT INTO jobs (id, state, position, spec, image, output, owner, created_at, batch_id, label) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, (last or 0.0) + 1.0, spec.to_json(None), str(stored),
                 None if output is None else str(output), owner, time.time(), batch_id, label))
        return self.get(job_id)

    def edit(self, job_id: str, spec: JobSpec) -> QueuedJob:
        """Replace a pending job's settings (same input image)."""
        job = self.get(job_id)
        if spec.image_sha256 != job.spec.image_sha256:
            raise InvalidInputError("image_sha256", "an edit keeps the job's input image",
                                    "Submit a new job for another image.")
        self._change(job_id, "UPDATE jobs SET spec = ? WHERE id = ? AND state = 'queued'",
                     (spec.to_json(None), job_id), "edit", "only a pending job can be edited")
        return self.get(job_id)

    def move(self, job_id: str, place: int, *, among_owner: str | None = None) -> QueuedJob:
        """Put a pending job at 1-based ``place`` among the pending jobs (clamped to the queue's length).

        ``among_owner``: a user sharing the queue reorders only their own jobs: ``place`` counts that owner's
        pending jobs, which swap among the places they hold, so nobody else's job moves.
        """
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT id, owner FROM jobs WHERE state = 'queued' ORDER BY position").fetchall()
            ids = [row["id"] for row in rows]
            if job_id not in ids:
                raise QueueError(f"Job {job_id} is not pending, so it has no place in the queue to change.",
                                 "Only pending jobs can be moved.")
            slots = (range(len(ids)) if among_owner is None
                     else [i for i, row in enumerate(rows) if row["owner"] == among_owner])
            movable = [ids[i] for i in slots]
            if job_id not in movable:
                raise QueueError(f"There is no job {job_id!r} in the queue.", "List the jobs to see their ids.")
            movable.remove(job_id)
            movable.insert(max(0, min(place - 1, len(movable))), job_id)
            for slot, moved in zip(slots, movable):
                ids[slot] = moved
            connection.executemany("UPDATE jobs SET position = ? WHERE id = ?",
                                   [(float(i + 1), jid) for i, jid in enumerate(ids)])
        return self.get(job_id)

    def cancel(self, job_id: str) -> QueuedJob:
        """A pending job ends at once; a running one is asked to stop (its worker stops after the current step)."""
        with self._transaction() as connection:
            row = connection.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise QueueError(f"There is no job {job_id!r} in the queue.", "List the jobs to see their ids.")
            if row["state"] == JobState.QUEUED.value:
                connection.execute("UPDATE jobs SET state = 'cancelled', ended_at = ? WHERE id = ?",
                                   (time.time(), job_id))
            elif row["state"] == JobState.RUNNING.value:
                connection.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise QueueError(f"Job {job_id} has already ended ({row['state']}).", "Nothing to cancel.")
        return self.get(job_id)

    def retry(self, job_id: str) -> QueuedJob:
        """Put a failed or cancelled job back at the end of the queue; it resumes from its last finished section
        and writes its video under the job's normal name. The partial video of the attempt that ended is kept:
        renamed to ``<stem>.attempt<N>.partial.mp4`` (with its sidecar), so the new attempt cannot overwrite it."""
        renamed: list[tuple[Path, Path]] = []
        try:
            with self._transaction() as connection:
                row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    raise QueueError(f"There is no job {job_id!r} in the queue.", "List the jobs to see their ids.")
                job = _job_or_error(row)
                if job.state not in (JobState.FAILED, JobState.CANCELLED):
                    raise QueueError(f"Job {job_id} is {job.state.value}; only failed or cancelled jobs can be "
                                     "retried.", "Submit it again to make another video with the same settings.")
                output, partial = final_and_partial(job)
                if partial is not None and output is not None and partial.name == output.stem + PARTIAL_SUFFIX:
                    partial, renamed = keep_partial(partial, max(job.attempts, 1))
                last = connection.execute("SELECT MAX(position) FROM jobs WHERE state = 'queued'").fetchone()[0]
                connection.execute(
                    "UPDATE jobs SET state = 'queued', position = ?, cancel_requested = 0, error = NULL, "
                    "hint = NULL, ended_at = NULL, output = ?, partial = ? WHERE id = ?",
                    ((last or 0.0) + 1.0, None if output is None else str(output),
                     None if partial is None else str(partial), job_id))
        except BaseException:
            for original, kept in reversed(renamed):  # the row still names the original: put the files back
                with suppress(OSError):
                    os.rename(kept, original)
            raise
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Remove an ended or pending job, or a damaged row, and its checkpoints (not its videos)."""
        with self._transaction() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise QueueError(f"There is no job {job_id!r} in the queue.", "List the jobs to see their ids.")
            try:
                running = read_job(row).state == JobState.RUNNING
            except DamagedRow:
                running = False  # no worker can run a row it cannot read
            if running:
                raise QueueError(f"Cannot delete job {job_id} (running): a running job cannot be deleted: "
                                 "cancel it first.", "Cancel it, then delete it once it has stopped.")
            if isinstance(row["output"], str) and isinstance(row["owner"], str):  # its videos stay its owner's
                connection.execute("INSERT OR REPLACE INTO output_owners (base, owner) VALUES (?, ?)",
                                   (output_base(row["output"]), row["owner"]))
            connection.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        job_dir = self.job_dir(job_id)
        if job_dir.resolve().parent == (self.root / "jobs").resolve():  # a damaged id never reaches outside
            shutil.rmtree(job_dir, ignore_errors=True)

    # The worker's side ---------------------------------------------------------------------------------------

    def claim_next(self, worker: str | None = None) -> QueuedJob | None:
        """Take the first pending job and mark it running on ``worker`` (its name), atomically; None when nothing
        is pending. Damaged rows are passed over: they stay in ``damaged`` until deleted."""
        with self._transaction() as connection:
            rows = connection.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY position").fetchall()
            job_id = next((row["id"] for row in rows if _readable(row)), None)
            if job_id is None:
                return None
            connection.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1, worker = ? "
                "WHERE id = ? AND state = 'queued'", (time.time(), worker, job_id))
        return self.get(job_id)

    def record_progress(self, job_id: str, sections_done: int, total_sections: int | None) -> bool:
        """Store progress; returns whether a cancel was requested meanwhile."""
        with self._transaction() as connection:
            connection.execute("UPDATE jobs SET sections_done = ?, total_sections = ? WHERE id = ?",
                               (sections_done, total_sections, job_id))
            row = connection.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as connection:
            row = connection.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def output_owners(self) -> dict[str, str | None]:
        """``output_base`` of each job's videos -> the login that made them, deleted jobs' included."""
        with self._connect() as connection:
            owners = {base: owner for base, owner in connection.execute("SELECT base, owner FROM output_owners")}
            for output, owner in connection.execute("SELECT output, owner FROM jobs WHERE output IS NOT NULL"):
                if isinstance(output, str) and (owner is None or isinstance(owner, str)):
                    owners[output_base(output)] = owner
        return owners

    def set_output(self, job_id: str, output: Path) -> None:
        with self._transaction() as connection:
            connection.execute("UPDATE jobs SET output = ? WHERE id = ?", (str(output), job_id))

    def end(self, job_id: str, state: JobState, *, output: Path | None = None, partial: Path | None = None,
            error: str | None = None, hint: str | None = None) -> QueuedJob:
        """Mark a running job finished, failed or cancelled. ``output`` is the finished video; the playable part
        of a job that did not finish is its ``partial`` (the row's output keeps the job's normal name)."""
        if not state.done:
            raise ValueError(f"{state} is not an end state")
        self._change(job_id, "UPDATE jobs SET state = ?, ended_at = ?, output = COALESCE(?, output), "
                             "partial = COALESCE(?, partial), error = ?, hint = ?, cancel_requested = 0 "
                             "WHERE id = ? AND state = 'running'",
                     (state.value, time.time(), None if output is None else str(output),
                      None if partial is None else str(partial), error, hint, job_id),
                     "end", "it is not running")
        return self.get(job_id)

    def requeue(self, job_id: str) -> QueuedJob:
        """Put a running job back at the front of the queue (its worker is shutting down; it resumes later)."""
        with self._transaction() as connection:
            first = connection.execute("SELECT MIN(position) FROM jobs WHERE state = 'queued'").fetchone()[0]
            connection.execute("UPDATE jobs SET state = 'queued', position = ?, cancel_requested = 0 "
                               "WHERE id = ? AND state = 'running'", ((first or 1.0) - 1.0, job_id))
        return self.get(job_id)

    def reject(self, job_id: str, error: str, hint: str = "") -> QueuedJob:
        """End a pending job that cannot run (its stored image is gone, its spec no longer valid)."""
        self._change(job_id, "UPDATE jobs SET state = 'failed', ended_at = ?, error = ?, hint = ? "
                             "WHERE id = ? AND state = 'queued'", (time.time(), error, hint, job_id),
                     "reject", "it is not pending")
        return self.get(job_id)

    def requeue_interrupted(self) -> list[str]:
        """Running jobs whose worker is gone (their folder's lock is free) go back to the front of the queue."""
        from filelock import FileLock, Timeout

        requeued = []
        for job in self.list(states=(JobState.RUNNING,)):
            job_dir = self.job_dir(job.id)
            job_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(job_dir / ".lock"), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                continue  # its worker is alive
            try:
                with self._transaction() as connection:
                    first = connection.execute("SELECT MIN(position) FROM jobs WHERE state = 'queued'").fetchone()[0]
                    changed = connection.execute(
                        "UPDATE jobs SET state = 'queued', position = ? WHERE id = ? AND state = 'running'",
                        ((first or 1.0) - 1.0, job.id)).rowcount
                if changed:
                    requeued.append(job.id)
            finally:
                lock.release()
        return requeued

    # Internals -----------------------------------------------------------------------------------------------

    def _connect(self) -> ClosingConnection:
        return ClosingConnection(connect(self.database))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with disk_full_as_error("the job queue", self.database), self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")  # takes the write lock now: read-then-write is atomic
            try:
                yield connection
            except BaseException:
                with suppress(sqlite3.Error):  # SQLite may have rolled back already (a full disk does)
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _rows(self, owner: str | None, states: tuple[JobState, ...] | None) -> Iterator[QueuedJob | DamagedJob]:
        """Every row matching, in listing order, read back as a job or as a damaged row."""
        query, arguments, conditions = "SELECT * FROM jobs", [], []
        if owner is not None:
            conditions.append("owner = ?")
            arguments.append(owner)
        if states:
            conditions.append(f"state IN ({', '.join('?' * len(states))})")
            arguments += [s.value for s in states]
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += (" ORDER BY CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END,"
                  " CASE WHEN state = 'queued' THEN position ELSE -COALESCE(ended_at, created_at) END")
        with self._connect() as connection:
            rows = connection.execute(query, arguments).fetchall()
        for row in rows:
            try:
                yield read_job(row)
            except DamagedRow as damage:
                yield DamagedJob(id=str(row["id"]), owner=None if row["owner"] is None else str(row["owner"]),
                                 reason=damage.reason)

    def _change(self, job_id: str, statement: str, arguments: tuple, action: str, why: str) -> None:
        with self._transaction() as connection:
            changed = connection.execute(statement, arguments).rowcount
        if not changed:
            job = self.get(job_id)  # raises for an unknown id
            raise QueueError(f"Cannot {action} job {job_id} ({job.state.value}): {why}.", "")

    def _store_image(self, image: Path, sha256: str) -> Path:
        stored = self.root / "images" / f"{sha256}{image.suffix.lower() or '.img'}"
        if not stored.exists():
            try:
                with atomic_path(stored, private=True) as temporary:
                    shutil.copyfile(image, temporary)
            except OSError as error:
                if is_disk_full(error):
                    raise DiskFullError("the input image into the job queue", str(stored.parent)) from error
                raise QueueError(f"Could not store the input image in the queue: {error.strerror or error}",
                                 "Check that the output folder is writable.") from error
        if file_sha256(stored) != sha256:  # a damaged copy from an earlier crash: store it again
            stored.unlink()
            return self._store_image(image, sha256)
        return stored


def _refuse_over_limit(connection: sqlite3.Connection, owner: str, max_pending: int) -> None:
    pending = connection.execute("SELECT COUNT(*) FROM jobs WHERE owner = ? AND state = 'queued'",
                                 (owner,)).fetchone()[0]
    if pending >= max_pending:
        raise QueueLimitError(f"You already have {pending} jobs waiting in the queue; each user may have at most "
                              f"{max_pending}.", "Wait for some of them to run, or cancel some, then submit again.")


def _readable(row: sqlite3.Row) -> bool:
    try:
        read_job(row)
    except DamagedRow:
        return False
    return True


def _job_or_error(row: sqlite3.Row) -> QueuedJob:
    try:
        return read_job(row)
    except DamagedRow as damage:
        job_id = str(row["id"])
        raise QueueError(f"Job {job_id} is damaged in the queue: {damage.reason}.",
                         f"Delete it (in the Queue tab, DELETE /api/v1/jobs/{job_id}, or `python -m framepack_core "
                         f"jobs delete {job_id}`): what it stored cannot be read back.") from None


