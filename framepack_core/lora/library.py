"""The LoRA folder: the ``.safetensors`` files the app offers, listed by name, size and SHA-256.

A page or an API client never gives the server a path: it names one of this folder's files, and ``LoraFolder``
looks the name up in its own listing. A name with a folder part, ``..``, an absolute path or a name that is not
listed is refused (``InvalidInputError`` naming ``loras``), so with logins on no user can make the server read any
other file. Only the folder's top level is listed; hidden files (``.name``) are left out.

Hashing a large LoRA takes seconds, so each file's SHA-256 is kept by (size, modification time) for as long as the
``LoraFolder`` lives: listing again after the first time reads no file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.jobs.spec import file_sha256
from framepack_core.request import LoraChoice

LORA_SUFFIX = ".safetensors"
# How many of the folder's names a refusal lists before "and N more".
NAMES_IN_HINT = 8


@dataclass(frozen=True)
class LoraFile:
    """One file of the LoRA folder. ``sha256`` is None when the listing was asked for without hashes."""

    name: str
    path: Path
    size: int
    sha256: str | None = None


class LoraFolder:
    """The LoRA files of ``folder`` (which need not exist yet: then there are none). Safe to share between
    threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._hashes: dict[str, tuple[int, int, str]] = {}  # name -> (size, mtime_ns, sha256)
        self._lock = threading.Lock()

    def files(self, *, with_sha256: bool = True) -> list[LoraFile]:
        """The folder's LoRA files by name (case-insensitive order). ``with_sha256=False`` reads no file, for a
        quick listing of names and sizes."""
        try:
            entries = [entry for entry in self.folder.iterdir()
                       if entry.suffix.lower() == LORA_SUFFIX and not entry.name.startswith(".")]
        except OSError:  # no folder (yet), or not readable: nothing to offer
            return []
        found = []
        for entry in entries:
            try:
                if not entry.is_file():
                    continue
                stat = entry.stat()
                sha256 = self._sha256(entry, stat.st_size, stat.st_mtime_ns) if with_sha256 else None
            except OSError:  # removed or unreadable while listing
                continue
            found.append(LoraFile(entry.name, entry, stat.st_size, sha256))
        return sorted(found, key=lambda lora: (lora.name.lower(), lora.name))

    def resolve(self, name: Any) -> LoraFile:
        """The listed file called ``name``; ``InvalidInputError("loras", ...)`` for anything else."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError("loras", f"names no file ({name!r})", self._names_hint())
        if "/" in name or "\\" in name or name in (".", "..") or Path(name).is_absolute():
            raise InvalidInputError("loras", f"{name!r} is a path; only a file name of the LoRA folder is taken",
                                    self._names_hint())
        for lora in self.files(with_sha256=False):
            if lora.name == name:
                return lora
        raise InvalidInputError("loras", f"there is no LoRA called {name!r} in the LoRA folder", self._names_hint())

    def by_sha256(self, sha256s: Iterable[str]) -> dict[str, LoraFile]:
        """The listed files whose SHA-256 is one of ``sha256s``, by SHA-256 (a file missing is absent)."""
        wanted = set(sha256s)
        return {lora.sha256: lora for lora in self.files() if lora.sha256 in wanted}

    def choices(self, weights: Mapping[str, float]) -> tuple[LoraChoice, ...]:
        """``{name: weight}`` as the request's LoRAs, each name resolved in the folder; weight 0 leaves it out."""
        return tuple(LoraChoice(self.resolve(name).path, weight) for name, weight in weights.items()
                     if weight not in (0, None))

    def named_choices(self, value: Any) -> tuple[LoraChoice, ...]:
        """An API client's ``[{"name": "style.safetensors", "weight": 0.8}, ...]`` as the request's LoRAs (a
        missing weight is 1). The weights' ranges are the request's to check."""
        if not isinstance(value, list):
            raise InvalidInputError("loras", f"must be a list of {{name, weight}} objects, got {type(value).__name__}",
                                    'Send e.g. [{"name": "style.safetensors", "weight": 0.8}].')
        choices = []
        for item in value:
            if not isinstance(item, dict) or "name" not in item or not set(item) <= {"name", "weight"}:
                raise InvalidInputError("loras", f"holds {item!r}, which is not a {{name, weight}} object",
                                        'Name each LoRA by its file name in the LoRA folder, e.g. '
                                        '{"name": "style.safetensors", "weight": 0.8}; paths are not taken.')
            weight = item.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise InvalidInputError("loras", f"the weight of {item['name']!r} is not a number ({weight!r})",
                                        "1 is the strength the LoRA was trained at, 0 turns it off.")
            choices.append(LoraChoice(self.resolve(item["name"]).path, float(weight)))
        return tuple(choices)

    def _sha256(self, path: Path, size: int, mtime_ns: int) -> str:
        with self._lock:
            known = self._hashes.get(path.name)
        if known is not None and known[:2] == (size, mtime_ns):
            return known[2]
        sha256 = file_sha256(path)  # outside the lock: another thread may list meanwhile
        with self._lock:
            self._hashes[path.name] = (size, mtime_ns, sha256)
        return sha256

    def _names_hint(self) -> str:
        names = [lora.name for lora in self.files(with_sha256=False)]
        if not names:
            return f"The LoRA folder has no {LORA_SUFFIX} files: put them there first."
        listed = ", ".join(names[:NAMES_IN_HINT])
        more = f" and {len(names) - NAMES_IN_HINT} more" if len(names) > NAMES_IN_HINT else ""
        return f"Name one of the LoRA folder's files: {listed}{more}."
