"""A row of the job queue: the job it holds, or why it cannot be read back; and a retried job's partial video.

Reading a row never raises anything but ``DamagedRow``: its text may be bytes that are not UTF-8 (see
``framepack_core.jobs.queue_database``), its spec malformed JSON or settings this version refuses, its state unknown,
its numbers text. The queue lists such a row as damaged, so one bad row never breaks a listing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from framepack_core.errors import InvalidInputError
from framepack_core.jobs.output_description import sidecar_path
from framepack_core.jobs.output_naming import PARTIAL_SUFFIX
from framepack_core.jobs.queue_database import UndecodableText
from framepack_core.jobs.spec import JobSpec
from framepack_core.request import GenerationRequest


class JobState(str, Enum):
    """Where a job is: stored in the queue's rows, shown by the app, the CLI and the REST API as these values."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class QueuedJob:
    id: str
    state: JobState
    position: float
    spec: JobSpec
    image: Path
    output: Path | None  # always the job's normal, final name
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
    partial: Path | None = None  # the playable part an attempt that did not finish left behind
    batch_id: str | None = None  # the batch it was queued with (``jobs.batch``), None for a job of its own
    label: str | None = None  # a batch job's image and prompt, in its output's name (``output_naming.batch_label``)
    worker: str | None = None  # the worker that runs it, or ran it last (``framepack_core.workers``)

    def input_files(self) -> dict[str, Path]:
        """The stored copy of each input file besides the start image, by SHA-256 (stored next to the image)."""
        found = {}
        for sha256 in self.spec.input_sha256s():
            copies = sorted(self.image.parent.glob(f"{sha256}.*"))
            if copies:
                found[sha256] = copies[0]
        return found

    def request(self, output: Path | None = None) -> GenerationRequest:
        """The request that runs this job from its stored input files (``InvalidInputError`` if one is gone)."""
        return self.spec.request(self.image, output=output if output is not None else self.output,
                                 files=self.input_files())

    def summary(self) -> dict[str, object]:
        """JSON-ready, for the CLI and the API (paths as names only: the API never shows server paths)."""
        return {"id": self.id, "state": self.state.value, "owner": self.owner, "attempts": self.attempts,
                "created_at": self.created_at, "started_at": self.started_at, "ended_at": self.ended_at,
                "sections_done": self.sections_done, "total_sections": self.total_sections,
                "cancel_requested": self.cancel_requested, "error": self.error, "hint": self.hint,
                "output": None if self.output is None else self.output.name,
                "partial": None if self.partial is None else self.partial.name, "batch_id": self.batch_id,
                "label": self.label, "worker": self.worker, "spec": self.spec.to_dict()}


@dataclass(frozen=True)
class DamagedJob:
    """A stored row that cannot be read back as a job; ``reason`` says what is wrong with it."""

    id: str
    owner: str | None
    reason: str

    def summary(self) -> dict[str, object]:
        return {"id": self.id, "owner": self.owner, "reason": self.reason}


class DamagedRow(Exception):
    """Raised by ``read_job`` for a row that cannot be read back as a job."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def final_and_partial(job: QueuedJob) -> tuple[Path | None, Path | None]:
    """The job's final name and its partial video. Rows written before the partial had its own column stored the
    partial as the output; the final name is the partial's without ``.partial``."""
    if job.partial is None and job.output is not None and job.output.name.endswith(PARTIAL_SUFFIX):
        return job.output.with_name(job.output.name.removesuffix(PARTIAL_SUFFIX) + ".mp4"), job.output
    return job.output, job.partial


def keep_partial(partial: Path, attempt: int) -> tuple[Path | None, list[tuple[Path, Path]]]:
    """Rename ``<stem>.partial.mp4`` (and its sidecar) to ``<stem>.attempt<N>.partial.mp4``, never over an
    existing file. Returns the new name (None when the partial is gone) and the renames made, to undo them."""
    if not partial.is_file():
        return None, []
    stem = partial.name.removesuffix(PARTIAL_SUFFIX)
    kept, extra = partial.with_name(f"{stem}.attempt{attempt}{PARTIAL_SUFFIX}"), 2
    while kept.exists() or sidecar_path(kept).exists():
        kept, extra = partial.with_name(f"{stem}.attempt{attempt}-{extra}{PARTIAL_SUFFIX}"), extra + 1
    renamed = [(partial, kept)]
    os.rename(partial, kept)
    if sidecar_path(partial).is_file():
        os.rename(sidecar_path(partial), sidecar_path(kept))
        renamed.append((sidecar_path(partial), sidecar_path(kept)))
    return kept, renamed


# Columns that must hold numbers: name -> whether NULL is allowed.
_NUMBER_COLUMNS = {"position": False, "created_at": False, "started_at": True, "ended_at": True, "attempts": False,
                   "cancel_requested": False, "sections_done": False, "total_sections": True}


def read_job(row: sqlite3.Row) -> QueuedJob:
    """The row as a job, or ``DamagedRow`` saying why it cannot be one."""
    for name in row.keys():
        if isinstance(row[name], UndecodableText):
            raise DamagedRow(f"its {name} holds bytes that are not UTF-8 text")
    for name, nullable in _NUMBER_COLUMNS.items():
        value = row[name]
        if not (isinstance(value, (int, float)) or (nullable and value is None)):
            raise DamagedRow(f"its {name} ({value!r}) is not a number")
    try:
        state = JobState(row["state"])
    except ValueError:
        raise DamagedRow(f"its state {row['state']!r} is unknown") from None
    try:
        spec = JobSpec.from_dict(json.loads(row["spec"]))
        # Text that JSON can escape but UTF-8 cannot encode (a lone surrogate) would break whoever shows it.
        json.dumps(spec.to_dict(), ensure_ascii=False).encode("utf-8")
    except InvalidInputError as error:
        raise DamagedRow(f"its settings are invalid ({error.message})") from None
    except UnicodeEncodeError:
        raise DamagedRow("its settings hold text that is not valid Unicode") from None
    except (ValueError, TypeError) as error:
        raise DamagedRow(f"its settings are not valid JSON ({error})") from None
    return QueuedJob(
        id=row["id"], state=state, position=row["position"], spec=spec, image=Path(row["image"]),
        output=None if row["output"] is None else Path(row["output"]), owner=row["owner"],
        created_at=row["created_at"], started_at=row["started_at"], ended_at=row["ended_at"],
        attempts=row["attempts"], cancel_requested=bool(row["cancel_requested"]),
        sections_done=row["sections_done"], total_sections=row["total_sections"], error=row["error"],
        hint=row["hint"], partial=None if row["partial"] is None else Path(row["partial"]),
        batch_id=row["batch_id"], label=row["label"], worker=row["worker"])
