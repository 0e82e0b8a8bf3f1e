"""What the runner needs of a worker, wherever its engine runs, and how a worker's death is reported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from framepack_core.errors import FramePackError
from framepack_core.events import CancelToken, EngineEvent
from framepack_core.request import GenerationRequest


class WorkerLostError(FramePackError):
    """The worker running a job died (its process was killed, its machine went away): the job goes back to the
    front of the queue and resumes from its last finished section, on this worker once restarted or another."""

    def __init__(self, worker: str, why: str) -> None:
        super().__init__(f"Worker {worker} stopped while running the job: {why}",
                         "The job resumes from its last finished section on the next free worker.")
        self.worker = worker


class Worker(Protocol):
    """An engine somewhere else. ``generate`` behaves as ``FramePackEngine.generate`` does (the same events, paths
    in this process's file system, ``InvalidInputError`` before the first event for a refused request, a cancel
    seen within a step), except that it raises ``WorkerLostError`` when the worker dies mid-job."""

    name: str

    def generate(self, request: GenerationRequest, cancel: CancelToken | None = None, job_id: str | None = None,
                 snapshot_dir: Path | None = None, job_dir: Path | None = None) -> Iterator[EngineEvent]: ...

    def release(self) -> None:
        """Free the worker's models (it loads them again for its next job)."""

    def close(self) -> None:
        """Stop the worker for good."""


def unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats told apart (``cpu``, ``cpu`` -> ``cpu#1``, ``cpu#2``): a worker's name is how the
    queue, the page and the API say which one runs a job."""
    return [f"{name}#{names[:i + 1].count(name)}" if names.count(name) > 1 else name for i, name in enumerate(names)]

