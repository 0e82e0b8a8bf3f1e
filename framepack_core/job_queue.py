"""The persistent job queue: SQLite in the output folder, shared by the app, the CLI and the HTTP API.

Layout under the queue folder (``<output folder>/.queue`` by default)::

    queue.sqlite3        one row per job: its spec, state, place in the queue, progress and result
    images/<sha256>.ext  the input images, stored once by content
    jobs/<id>/           each job's folder (``framepack_core.checkpoint``): section checkpoints while it runs

Every state change is one SQLite transaction whose ``UPDATE`` names the state it expects, so two workers can never
claim the same job, and a cancel that races a finish has exactly one outcome. A job whose worker died (a crash, a
kill -9, a reboot) is still marked running; ``requeue_interrupted`` puts it back at the front of the queue, and
it resumes from its last finished section because its job folder kept the checkpoints. A job is known to be
orphaned when its folder's lock is free: a running worker holds it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from framepack_core.errors import FramePackError, InvalidInputError
from framepack_core.job_spec import JobSpec, file_sha256

QUEUE_FOLDER = ".queue"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    position REAL NOT NULL,
    spec TEXT NOT NULL,
    image TEXT NOT NULL,
    output TEXT,
    owner TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    sections_done INTEGER NOT NULL DEFAULT 0,
    total_sections INTEGER,
    error TEXT,
    hint TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, position);
"""


class QueueState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (QueueState.FINISHED, QueueState.FAILED, QueueState.CANCELLED)


class QueueError(FramePackError):
    """A queue operation that does not apply to the job as it is (unknown id, wrong state)."""


@dataclass(frozen=True)
class QueuedJob:
    id: str
    state: QueueState
    position: float
    spec: JobSpec
    image: Path
    output: Path | None
    owner: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    attempts: int
    cancel_requested: bool
    sections_done: int
    total_sections: int | None
    error: str | None
    hint: str | None

    def summary(self) -> dict[str, object]:
        """JSON-ready, for the CLI and the API (paths as names only: the API never shows server paths)."""
        return {"id": self.id, "state": self.state.value, "owner": self.owner, "attempts": self.attempts,
                "created_at": self.created_at, "started_at": self.started_at, "ended_at": self.ended_at,
                "sections_done": self.sections_done, "total_sections": self.total_sections,
                "cancel_requested": self.cancel_requested, "error": self.error, "hint": self.hint,
                "output": None if self.output is None else self.output.name, "spec": self.spec.to_dict()}


class JobQueue:
    """The queue in ``root`` (created if missing). Thread-safe: every call opens its own connection."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            (self.root / "images").mkdir(parents=True, exist_ok=True)
            (self.root / "jobs").mkdir(exist_ok=True)
        except OSError as error:
            raise QueueError(f"Cannot create the job queue in {self.root}: {error.strerror or error}",
                             "Choose an output folder you can write to.") from error
        self.database = self.root / "queue.sqlite3"
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)

    @classmethod
    def for_output_dir(cls, output_dir: Path) -> JobQueue:
        return cls(Path(output_dir) / QUEUE_FOLDER)

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    # Reading -------------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> QueuedJob:
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(f"There is no job {job_id!r} in the queue.", "List the jobs to see their ids.")
        return _job(row)

    def list(self, *, owner: str | None = None, states: tuple[QueueState, ...] | None = None) -> list[QueuedJob]:
        """Running first, then pending in queue order, then ended jobs, newest first."""
        query, arguments = "SELECT * FROM jobs", []
        conditions = []
        if owner is not None:
            conditions.append("owner = ?")
            arguments.append(owner)
        if states:
            conditions.append(f"state IN ({', '.join('?' * len(states))})")
            arguments += [s.value for s in states]
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += (" ORDER BY CASE state WHEN 'running' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END,"
                  " CASE WHEN state = 'pending' THEN position ELSE -COALESCE(ended_at, created_at) END")
        with self._connect() as connection:
            return [_job(row) for row in connection.execute(query, arguments)]

    def pending_position(self, job_id: str) -> int | None:
        """1-based place among the pending jobs, or None when the job is not pending."""
        ids = [job.id for job in self.list(states=(QueueState.PENDING,))]
        return ids.index(job_id) + 1 if job_id in ids else None

    # Changing ------------------------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, image: Path, *, output: Path | None = None, owner: str | None = None) -> QueuedJob:
        """Add a job at the end of the queue. ``image`` must be the spec's image (its SHA-256 is checked); a copy
        is kept in the queue, so the original may be moved or deleted afterwards."""
        spec.check_image(Path(image))
        stored = self._store_image(Path(image), spec.image_sha256)
        job_id = uuid.uuid4().hex[:12]
        with self._transaction() as connection:
            last = connection.execute("SELECT MAX(position) FROM jobs WHERE state = 'pending'").fetchone()[0]
            connection.execute(
                "INSERT INTO jobs (id, state, position, spec, image, output, owner, created_at) "
                "VALUES (?, 'pending', ?, ?, ?, ?, ?, ?)",
                (job_id, (last or 0.0) + 1.0, spec.to_json(None), str(stored),
                 None if output is None else str(output), owner, time.time()))
        return self.get(job_id)

    def edit(self, job_id: str, spec: JobSpec) -> QueuedJob:
        """Replace a pending job's settings (same input image)."""
        job = self.get(job_id)
        if spec.image_sha256 != job.spec.image_sha256:
            raise InvalidInputError("image_sha256", "an edit keeps the job's input image",
                                    "Submit a new job for another image.")
        self._change(job_id, "UPDATE jobs SET spec = ? WHERE id = ? AND state = 'pending'",
                     (spec.to_json(None), job_id), "edit", "only a pending job can be edited")
        return self.get(job_id)

    def move(self, job_id: str, place: int) -> QueuedJob:
        """Put a pending job at 1-based ``place`` among the pending jobs (clamped to the queue's length)."""
        with self._transaction() as connection:
            rows = connection.execute("SELECT id FROM jobs WHERE state = 'pending' ORDER BY position").fetchall()
            ids = [row["id"] for row in rows]
            if job_id not in ids:
                raise QueueError(f"Job {job_id} is not pending, so it has no place in the queue to change.",
                                 "Only pending jobs can be moved.")
            ids.remove(job_id)
            ids.insert(max(0, min(place - 1, len(ids))), job_id)
            connection.executemany("UPDATE jobs SET position = ? WHERE id = ?",
                                   [(float(i + 1), jid) for i, jid in enumerate(ids)])
        return self.get(job_id)

    def cancel(self, job_id: str) -> QueuedJob:
        """A pending job ends at once; a running one is asked to stop (its worker stops after the current step)."""
        with self._transaction() as connection:
            row = connection.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise QueueError(f"There is no job {job_id!r} in the queue.", "List the jobs to see their ids.")
            if row["state"] == QueueState.PENDING.value:
                connection.execute("UPDATE jobs SET state = 'cancelled', ended_at = ? WHERE id = ?",
                                   (time.time(), job_id))
            elif row["state"] == QueueState.RUNNING.value:
                connection.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            else:
                raise QueueError(f"Job {job_id} has already ended ({row['state']}).", "Nothing to cancel.")
        return self.get(job_id)

    def retry(self, job_id: str) -> QueuedJob:
        """Put a failed or cancelled job back at the end of the queue; it resumes from its last finished section."""
        with self._transaction() as connection:
            last = connection.execute("SELECT MAX(position) FROM jobs WHERE state = 'pending'").fetchone()[0]
            changed = connection.execute(
                "UPDATE jobs SET state = 'pending', position = ?, cancel_requested = 0, error = NULL, hint = NULL,"
                " ended_at = NULL WHERE id = ? AND state IN ('failed', 'cancelled')",
                ((last or 0.0) + 1.0, job_id)).rowcount
        if not changed:
            job = self.get(job_id)
            raise QueueError(f"Job {job_id} is {job.state.value}; only failed or cancelled jobs can be retried.",
                             "Submit it again to make another video with the same settings.")
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Remove an ended or pending job and its checkpoints (not its finished video)."""
        self._change(job_id, "DELETE FROM jobs WHERE id = ? AND state != 'running'", (job_id,), "delete",
                     "a running job cannot be deleted: cancel it first")
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    # The worker's side ---------------------------------------------------------------------------------------

    def claim_next(self) -> QueuedJob | None:
        """Take the first pending job and mark it running, atomically; None when nothing is pending."""
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT id FROM jobs WHERE state = 'pending' ORDER BY position LIMIT 1").fetchone()
            if row is None:
                return None
            connection.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1 "
                "WHERE id = ? AND state = 'pending'", (time.time(), row["id"]))
        return self.get(row["id"])

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

    def set_output(self, job_id: str, output: Path) -> None:
        with self._transaction() as connection:
            connection.execute("UPDATE jobs SET output = ? WHERE id = ?", (str(output), job_id))

    def end(self, job_id: str, state: QueueState, *, output: Path | None = None, error: str | None = None,
            hint: str | None = None) -> QueuedJob:
        """Mark a running job finished, failed or cancelled."""
        if not state.ended:
            raise ValueError(f"{state} is not an end state")
        self._change(job_id, "UPDATE jobs SET state = ?, ended_at = ?, output = COALESCE(?, output), error = ?, "
                             "hint = ?, cancel_requested = 0 WHERE id = ? AND state = 'running'",
                     (state.value, time.time(), None if output is None else str(output), error, hint, job_id),
                     "end", "it is not running")
        return self.get(job_id)

    def requeue(self, job_id: str) -> QueuedJob:
        """Put a running job back at the front of the queue (its worker is shutting down; it resumes later)."""
        with self._transaction() as connection:
            first = connection.execute("SELECT MIN(position) FROM jobs WHERE state = 'pending'").fetchone()[0]
            connection.execute("UPDATE jobs SET state = 'pending', position = ?, cancel_requested = 0 "
                               "WHERE id = ? AND state = 'running'", ((first or 1.0) - 1.0, job_id))
        return self.get(job_id)

    def reject(self, job_id: str, error: str, hint: str = "") -> QueuedJob:
        """End a pending job that cannot run (its stored image is gone, its spec no longer valid)."""
        self._change(job_id, "UPDATE jobs SET state = 'failed', ended_at = ?, error = ?, hint = ? "
                             "WHERE id = ? AND state = 'pending'", (time.time(), error, hint, job_id),
                     "reject", "it is not pending")
        return self.get(job_id)

    def requeue_interrupted(self) -> list[str]:
        """Running jobs whose worker is gone (their folder's lock is free) go back to the front of the queue."""
        from filelock import FileLock, Timeout

        requeued = []
        for job in self.list(states=(QueueState.RUNNING,)):
            job_dir = self.job_dir(job.id)
            job_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(job_dir / ".lock"), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                continue  # its worker is alive
            try:
                with self._transaction() as connection:
                    first = connection.execute("SELECT MIN(position) FROM jobs WHERE state = 'pending'").fetchone()[0]
                    changed = connection.execute(
                        "UPDATE jobs SET state = 'pending', position = ? WHERE id = ? AND state = 'running'",
                        ((first or 1.0) - 1.0, job.id)).rowcount
                if changed:
                    requeued.append(job.id)
            finally:
                lock.release()
        return requeued

    # Internals -----------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.database, timeout=30.0, isolation_level=None)
        connection.row_factory = sqlite3.Row
        return _Closing(connection)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")  # takes the write lock now: read-then-write is atomic
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _change(self, job_id: str, statement: str, arguments: tuple, action: str, why: str) -> None:
        with self._transaction() as connection:
            changed = connection.execute(statement, arguments).rowcount
        if not changed:
            job = self.get(job_id)  # raises for an unknown id
            raise QueueError(f"Cannot {action} job {job_id} ({job.state.value}): {why}.", "")

    def _store_image(self, image: Path, sha256: str) -> Path:
        stored = self.root / "images" / f"{sha256}{image.suffix.lower() or '.img'}"
        if not stored.exists():
            handle, temporary = tempfile.mkstemp(prefix=".image.", dir=stored.parent)
            os.close(handle)
            try:
                shutil.copyfile(image, temporary)
                os.replace(temporary, stored)
            except OSError as error:
                Path(temporary).unlink(missing_ok=True)
                raise QueueError(f"Could not store the input image in the queue: {error.strerror or error}",
                                 "Free some disk space in the output folder.") from error
        if file_sha256(stored) != sha256:  # a damaged copy from an earlier crash: store it again
            stored.unlink()
            return self._store_image(image, sha256)
        return stored


class _Closing:
    """A connection that closes when its ``with`` block ends (sqlite3's own only ends a transaction)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> sqlite3.Connection:
        return self._connection

    def __exit__(self, *exc: object) -> None:
        self._connection.close()


def _job(row: sqlite3.Row) -> QueuedJob:
    return QueuedJob(
        id=row["id"], state=QueueState(row["state"]), position=row["position"],
        spec=JobSpec.from_dict(json.loads(row["spec"])), image=Path(row["image"]),
        output=None if row["output"] is None else Path(row["output"]), owner=row["owner"],
        created_at=row["created_at"], started_at=row["started_at"], ended_at=row["ended_at"],
        attempts=row["attempts"], cancel_requested=bool(row["cancel_requested"]),
        sections_done=row["sections_done"], total_sections=row["total_sections"], error=row["error"],
        hint=row["hint"])
