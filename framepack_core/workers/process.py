"""A worker process per local device: its own engine, models and memory plan, fed one job at a time.

The process is started with ``spawn`` (a fresh interpreter: CUDA cannot be forked, and nothing of the parent's
state leaks in) on the first job, and again after it died or its models were released. It writes the job folder
and the videos itself, on this machine's file system, so what it reports is exactly what the engine reports.

Two one-way pipes connect the two sides, so the parent can ask for a cancel while events flow back. The process
exits when the parent goes away (its pipe closes), so a killed app leaves no worker running.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.events import CancelToken, EngineEvent, JobCancelled, JobFailed, JobFinished
from framepack_core.models.progress_bars import library_progress_bars_off
from framepack_core.request import GenerationRequest
from framepack_core.workers.recipe import EngineRecipe, worker_devices
from framepack_core.workers.remote import WorkerLostError, unique_names

logger = logging.getLogger(__name__)

POLL_S = 0.1  # how often the parent looks for a cancel to pass on, and for a process that died silently
TERMINAL = (JobFinished, JobCancelled, JobFailed)


class ProcessWorker:
    """A ``Worker`` (``framepack_core.workers.remote``) whose engine runs in a child process built from
    ``recipe``. Thread-safe for one job at a time, which is how the pool and the service use it."""

    def __init__(self, recipe: EngineRecipe, name: str | None = None, *, progress_bars: bool = True) -> None:
        self.recipe = recipe
        self.name = name or recipe.device
        # Several workers share one terminal, where their weight-loading bars would interleave line by line.
        self.progress_bars = progress_bars
        self._process: Any = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The running process's id (None before the first job and after it stopped)."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def generate(self, request: GenerationRequest, cancel: CancelToken | None = None, job_id: str | None = None,
                 snapshot_dir: Path | None = None, job_dir: Path | None = None) -> Iterator[EngineEvent]:
        cancel = cancel or CancelToken()
        with self._lock:
            self._ensure_started()
            to_child, from_child = self._to_child, self._from_child
            try:
                to_child.send(("run", request, job_id, snapshot_dir, job_dir))
            except OSError as error:
                self._forget()
                raise WorkerLostError(self.name, f"it could not be reached ({error})") from error
        cancel_sent = False
        while True:
            if cancel.cancelled and not cancel_sent:
                cancel_sent = True
                try:
                    to_child.send(("cancel",))
                except OSError:
                    pass  # it died; the next receive says so
            try:
                if not from_child.poll(POLL_S):
                    if not self._process.is_alive():
                        raise EOFError
                    continue
                message = from_child.recv()
            except (EOFError, OSError) as error:
                code = None
                if self._process is not None:
                    self._process.join(5)  # its pipe closes a moment before its exit code is known
                    code = self._process.exitcode
                self._forget()
                why = f"its process exited with code {code}" if code is not None else "its process is gone"
                raise WorkerLostError(self.name, why) from error
            kind = message[0]
            if kind == "event":
                yield message[1]
                if isinstance(message[1], TERMINAL):
                    return
            elif kind == "refused":
                raise InvalidInputError(message[1], message[2], message[3])
            else:  # "crashed": the engine raised what it should have reported; the caller treats it as a bug
                raise RuntimeError(f"The engine on worker {self.name} crashed:\n{message[1]}")

    def release(self) -> None:
        """Stop the process: its models' RAM and VRAM go with it; the next job starts a fresh one."""
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            process, to_child = self._process, self._to_child
            self._forget()
        if process is None:
            return
        try:
            to_child.send(("stop",))
        except OSError:
            pass
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(timeout)

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._forget()
        context = multiprocessing.get_context("spawn")
        child_reads, parent_writes = context.Pipe(duplex=False)
        parent_reads, child_writes = context.Pipe(duplex=False)
        process = context.Process(target=serve, args=(self.recipe, child_reads, child_writes, self.name, self.progress_bars),
                                  name=f"framepack-worker-{self.name}", daemon=True)
        process.start()
        child_reads.close()
        child_writes.close()
        self._process, self._to_child, self._from_child = process, parent_writes, parent_reads
        logger.info("Started worker %s (process %d)", self.name, process.pid)

    def _forget(self) -> None:
        for connection in (self._to_child, self._from_child):
            if connection is not None:
                connection.close()
        self._process = self._to_child = self._from_child = None


def local_workers(recipe: EngineRecipe, devices: str) -> list[ProcessWorker]:
    """A worker process per device ``--devices`` names (``worker_devices``), named apart, each planning its jobs
    for its share of this machine's RAM. ``InvalidInputError`` (field ``devices``) for a device this machine
    does not have."""
    names = worker_devices(devices)
    return [ProcessWorker(recipe.on_device(device, ram_share=1 / len(names)), name, progress_bars=len(names) == 1)
            for device, name in zip(names, unique_names(names))]


def serve(recipe: EngineRecipe, requests: Connection, replies: Connection, name: str = "",
          progress_bars: bool = True) -> None:
    """The child process: build the engine, then run each job asked for, sending its events back. A reader thread
    takes the parent's messages, so a cancel arrives while the engine is busy. Its log lines carry ``name``;
    ``progress_bars`` False hides the libraries' download and loading bars (its log says what it loads)."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s worker {name.replace('%', '%%') or '%(process)d'} %(levelname)s %(message)s")
    with contextlib.ExitStack() as quiet:
        if not progress_bars:
            quiet.enter_context(library_progress_bars_off())
        _serve(recipe, requests, replies)


def _serve(recipe: EngineRecipe, requests: Connection, replies: Connection) -> None:
    engine = recipe.build()
    jobs: list[tuple] = []
    arrived = threading.Condition()
    current: dict[str, CancelToken] = {}

    def read() -> None:
        while True:
            try:
                message = requests.recv()
            except (EOFError, OSError):  # the parent is gone: stop the job, then the process
                message = ("stop",)
            with arrived:
                if message[0] in ("cancel", "stop") and "token" in current:
                    current["token"].cancel()
                jobs.append(message)
                arrived.notify_all()
            if message[0] == "stop":
                return

    threading.Thread(target=read, name="framepack-worker-reader", daemon=True).start()
    while True:
        with arrived:
            while not jobs:
                arrived.wait()
            message = jobs.pop(0)
            if message[0] == "cancel":
                continue  # for a job that has ended meanwhile
            if message[0] == "stop":
                return
            current["token"] = CancelToken()
        _, request, job_id, snapshot_dir, job_dir = message
        try:
            for event in engine.generate(request, cancel=current["token"], job_id=job_id, snapshot_dir=snapshot_dir,
                                         job_dir=job_dir):
                replies.send(("event", event))
        except InvalidInputError as error:
            replies.send(("refused", error.field, error.message.removeprefix(f"{error.field}: "), error.hint))
        except Exception:  # noqa: BLE001 - reported to the parent, which fails the job as a bug
            replies.send(("crashed", traceback.format_exc()))
        finally:
            with arrived:
                current.pop("token", None)
