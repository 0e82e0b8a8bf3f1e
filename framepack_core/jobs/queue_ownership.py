"""One queue owner: of the processes sharing an output folder, only one runs its queue's jobs at a time.

The owner holds an OS file lock on ``<queue>/worker.lock`` for as long as it runs jobs; the OS drops the lock when
the process dies, even by kill -9, so a crashed owner never blocks the next one. Beside it, ``worker.json`` says
who the owner is (pid, host, program, since when), so a refused process can name it. The file may outlive its
writer; only the lock says whether anyone owns the queue now.

Ownership belongs to the process: inside the owning process a second ``take_ownership`` (the app's worker, then a
``QueueRunner`` in the same process) shares it, and the lock goes when the last of them releases it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from framepack_core.files import write_text_atomically

logger = logging.getLogger(__name__)

OWNER_LOCK = "worker.lock"
OWNER_FILE = "worker.json"
# How long taking ownership waits for a lock that is busy: another process's owner_description may be probing it.
_PROBE_GRACE_S = 0.5


@dataclass
class _Hold:
    lock: object  # filelock.FileLock (imported lazily, as job_queue does)
    holders: int = 0


_held: dict[Path, _Hold] = {}
_held_guard = threading.Lock()


class QueueOwnership:
    """This process owns the queue (runs its jobs) until ``release`` (or the end of a ``with`` block)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._released = False

    def release(self) -> None:
        """Give up this hold; the lock goes with the process's last one. Releasing twice does nothing."""
        with _held_guard:
            if self._released:
                return
            self._released = True
            hold = _held[self.root]
            hold.holders -= 1
            if hold.holders == 0:
                del _held[self.root]
                (self.root / OWNER_FILE).unlink(missing_ok=True)
                hold.lock.release()

    def __enter__(self) -> QueueOwnership:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def take_ownership(root: Path) -> QueueOwnership | None:
    """Own the queue in ``root``, or None when another live process owns it (``owner_description`` says who)."""
    from filelock import FileLock, Timeout

    key = Path(root).resolve()
    with _held_guard:
        hold = _held.get(key)
        if hold is None:
            # Not thread-local: the app takes it on one thread and may release it on another.
            lock = FileLock(str(key / OWNER_LOCK), timeout=_PROBE_GRACE_S, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                return None
            hold = _held[key] = _Hold(lock)
            _describe_this_process(key / OWNER_FILE)
        hold.holders += 1
    return QueueOwnership(key)


def owner_description(root: Path) -> str | None:
    """Who owns the queue in ``root`` ("process 1234 on host X: python launch.py ... since 10:31"), or None when
    no process does."""
    from filelock import FileLock, Timeout

    key = Path(root).resolve()
    with _held_guard:
        owned_here = key in _held
    if not owned_here:
        probe = FileLock(str(key / OWNER_LOCK), timeout=0, thread_local=False)
        try:
            probe.acquire()
        except Timeout:
            pass
        else:
            probe.release()
            return None
    return _read_description(key / OWNER_FILE)


def _describe_this_process(path: Path) -> None:
    """Write ``worker.json`` atomically. Failing to is logged, not raised: the lock alone makes the ownership."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(), "since": time.time()}
    try:
        write_text_atomically(path, json.dumps(record), private=True)
    except OSError as error:
        logger.warning("Could not write %s, which says who runs the queue: %s", path, error)


def _command_line() -> str:
    """The program and its subcommand only (``launch.py``, ``framepack_core jobs run``): never its options,
    which may hold logins (``--auth USER:PASS``) and are shown to every user of a shared app."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path(sys.executable)
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join([Path(sys.executable).name, name, *(word for word in sys.argv[1:] if word in _SUBCOMMANDS)])


_SUBCOMMANDS = ("jobs", "run")


def _read_description(path: Path) -> str:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        pid, host, command, since = record["pid"], record["host"], record["command"], float(record["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process (it has not said which: {path.name} is missing or unreadable)"
    if time.strftime("%Y-%m-%d", time.localtime(since)) == time.strftime("%Y-%m-%d"):
        when = time.strftime("%H:%M", time.localtime(since))
    else:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(since))
    return f"process {pid} on host {host}: {command} since {when}"
