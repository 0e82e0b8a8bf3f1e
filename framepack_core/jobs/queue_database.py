"""The job queue's SQLite file: opening it, its schema and migrations, a damaged file moved aside, a full disk.

A queue file that SQLite cannot read as a database (a clobbered header, a failing ``PRAGMA quick_check``) is never
repaired in place nor deleted: it is renamed to ``queue.sqlite3.damaged-<YYYYmmdd-HHMMSS>`` (with its ``-wal``
and ``-shm`` files, so SQLite's recovery tools can still read it whole) and a fresh queue starts in its place.

Text is read as bytes and decoded here, column by column, so one row holding bytes that are not UTF-8 is reported
as that row's damage instead of failing the whole query that reads it (sqlite3's own decoding raises mid-fetch).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from framepack_core.errors import DiskFullError

logger = logging.getLogger(__name__)

SCHEMA = """
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
    hint TEXT,
    partial TEXT,
    batch_id TEXT,
    label TEXT,
    worker TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, position);
-- Who made the videos of deleted jobs: deleting a job forgets the job, not whose videos are in the folder.
CREATE TABLE IF NOT EXISTS output_owners (
    base TEXT PRIMARY KEY,
    owner TEXT NOT NULL
);
"""
# Columns added after the first release: (name, declaration), added to older databases when they are opened.
ADDED_COLUMNS = (("partial", "TEXT"), ("batch_id", "TEXT"), ("label", "TEXT"), ("worker", "TEXT"))
# States renamed after the first release: (old, new). Older versions stored a waiting job as "pending"; the one
# job-state vocabulary (``queue_rows.JobState``) says "queued", as the REST API always did.
RENAMED_STATES = (("pending", "queued"),)
# SQLite's result codes (named in Python's sqlite3 only from 3.11, which also adds ``sqlite_errorcode``; before it
# only the message tells them apart).
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26
_DAMAGE_MESSAGES = ("file is not a database", "database disk image is malformed")
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class UndecodableText:
    """A stored text value whose bytes are not UTF-8; ``str()`` shows it with the bad bytes escaped."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __str__(self) -> str:
        return self.raw.decode("utf-8", errors="backslashreplace")

    def __repr__(self) -> str:
        return f"UndecodableText({self.raw!r})"


def _decode_text(raw: bytes) -> str | UndecodableText:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return UndecodableText(raw)


def connect(database: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) whose rows are ``sqlite3.Row``."""
    connection = sqlite3.connect(database, timeout=30.0, isolation_level=None)
    connection.row_factory = sqlite3.Row
    connection.text_factory = _decode_text
    return connection


class ClosingConnection:
    """A connection that closes when its ``with`` block ends (sqlite3's own only ends a transaction)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> sqlite3.Connection:
        return self._connection

    def __exit__(self, *exc: object) -> None:
        self._connection.close()


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.OperationalError):
        return (getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL
                or "database or disk is full" in str(error))
    return isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS


@contextmanager
def disk_full_as_error(what: str, where: Path | str = "") -> Iterator[None]:
    """Turn a full disk (SQLite's SQLITE_FULL, an OSError ENOSPC) met inside the block into ``DiskFullError``."""
    try:
        yield
    except (sqlite3.OperationalError, OSError) as error:
        if is_disk_full(error):
            raise DiskFullError(what, str(where)) from error
        raise


def open_database(database: Path) -> str | None:
    """Make ``database`` a usable queue with the current schema. A damaged file is moved aside first and a fresh
    queue started; the returned note then says so (None otherwise). Other processes may open it at the same time:
    a lock beside it makes the check, the move and the migration one step. Raises ``DiskFullError``, or
    ``sqlite3.Error`` for a file that cannot be opened at all (permissions, a failing drive)."""
    from filelock import FileLock

    with FileLock(str(database.parent / ".open.lock")):
        note = None
        problem = _damage(database)
        if problem is not None:
            moved = _move_aside(database)
            note = (f"The job queue's database {database} was damaged ({problem}). It was moved aside to {moved} "
                    f"and a fresh, empty queue was started; nothing was deleted. To get the old jobs back, try "
                    f"`sqlite3 {moved} .recover | sqlite3 recovered.sqlite3`; if you do not need them, delete "
                    f"{moved.name}.")
            logger.warning("%s", note)
        with ClosingConnection(connect(database)) as connection, disk_full_as_error("the job queue", database):
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            _migrate(connection)
        return note


def _damage(database: Path) -> str | None:
    """What makes ``database`` unusable as a database, or None when it is fine (or does not exist yet). Only
    SQLite's own verdict counts: a busy or read-only file is not damaged, and its error is raised instead."""
    if not database.exists():
        return None
    try:
        with ClosingConnection(connect(database)) as connection:
            verdict = [str(row[0]) for row in connection.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as error:
        code = getattr(error, "sqlite_errorcode", None)
        damaged = (code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) if code is not None
                   else any(message in str(error) for message in _DAMAGE_MESSAGES))
        if damaged:
            return str(error)
        raise
    return None if verdict == ["ok"] else "; ".join(verdict[:3])


def _move_aside(database: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = database.with_name(f"{database.name}.damaged-{stamp}")
    count = 2
    while moved.exists():
        moved = database.with_name(f"{database.name}.damaged-{stamp}-{count}")
        count += 1
    os.replace(database, moved)
    for suffix in ("-wal", "-shm"):  # they belong to the damaged file; beside a fresh one they would be applied to it
        companion = database.with_name(database.name + suffix)
        if companion.exists():
            os.replace(companion, moved.with_name(moved.name + suffix))
    return moved


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring a database written by an older version to the current schema and state names, in place."""
    connection.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
    try:
        present = {str(row["name"]) for row in connection.execute("PRAGMA table_info(jobs)")}
        for name, declaration in ADDED_COLUMNS:
            if name not in present:
                connection.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
        connection.executemany("UPDATE jobs SET state = ? WHERE state = ?",
                               [(new, old) for old, new in RENAMED_STATES])
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
