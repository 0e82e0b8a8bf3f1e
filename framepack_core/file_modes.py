"""Give files made with ``mkstemp`` (private 0600) the user's normal permissions before they are renamed."""

from __future__ import annotations

import os
from pathlib import Path


def _current_umask() -> int:
    # os.umask can only be read by setting it, which would race with other threads creating files, so read the
    # value Linux reports instead and fall back to the common default elsewhere.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def make_public(path: str | os.PathLike[str]) -> None:
    os.chmod(path, 0o666 & ~_current_umask())
