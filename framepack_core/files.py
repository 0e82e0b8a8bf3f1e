"""The one way files are written: beside the target, flushed to disk, then renamed over it.

A reader (another process, the app after a crash, a user's player) sees the old file or the new one, never half
of one; on any error the temporary file is removed and the target is left exactly as it was. The temporary file
is created with the user's normal permissions (mode 0o666 less the umask, as for any new file), or 0o600 for
``private`` files; ``mkstemp``'s 0o600 would make every finished video private to the app's account.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path, *, private: bool = False) -> Iterator[Path]:
    """Yield a new empty temporary path beside ``target`` to write; when the block ends without an error, the file
    is flushed to disk (``ENOSPC`` from delayed allocation surfaces here, before the rename) and renamed over
    ``target``, and the rename itself is made durable."""
    target = Path(target)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666))
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _sync_folder(target.parent)


def write_bytes_atomically(target: Path, data: bytes, *, private: bool = False) -> Path:
    with atomic_path(target, private=private) as temporary:
        temporary.write_bytes(data)
    return Path(target)


def write_text_atomically(target: Path, text: str, *, private: bool = False) -> Path:
    return write_bytes_atomically(target, text.encode("utf-8"), private=private)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut (POSIX; elsewhere the rename is all there is)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        handle = os.open(folder, os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems cannot sync a folder; the file itself is on disk
    finally:
        os.close(handle)
