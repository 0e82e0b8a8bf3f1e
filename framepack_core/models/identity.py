"""Which model files a job used, as short strings a job spec can carry and compare.

From the Hugging Face cache a component is ``org/name/subfolder@<commit>`` (the cache's snapshot folder is the
commit). A plain folder has no revision, so its identity is a digest of what decides the weights without reading
them: every config and tokenizer file, and each safetensors file's size and header (tensor names, dtypes, shapes
and offsets). Two copies of the same release give the same digest; a re-saved, fine-tuned or truncated copy does
not. Reading headers only keeps this to milliseconds even for the 30 GB set.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from framepack_core.models.components import ModelVariant
from framepack_core.models.loading import ComponentFiles, ModelSource, job_files, resolve_component

_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def folder_digest(folder: Path) -> str:
    """SHA-256 over the folder's small files and its safetensors headers, in name order (16 hex digits)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative.startswith(".") or "/." in relative:
            continue  # caches and locks of tools, not content
        digest.update(relative.encode() + b"\0")
        if path.suffix == ".safetensors":
            size = path.stat().st_size
            digest.update(str(size).encode() + b"\0")
            with open(path, "rb") as handle:
                raw = handle.read(_HEADER_LENGTH_BYTES)
                length = struct.unpack("<Q", raw)[0] if len(raw) == _HEADER_LENGTH_BYTES else 0
                digest.update(handle.read(min(length, _MAX_HEADER_BYTES)))
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def component_identity(source: ModelSource, files: ComponentFiles) -> str:
    name = files.repo + (f"/{files.subfolder}" if files.subfolder else "")
    folder = resolve_component(source, files.component, files.variant)
    snapshot = folder.parent if files.subfolder else folder
    if snapshot.parent.name == "snapshots" and snapshot.parent.parent.name.startswith("models--"):
        return f"{name}@{snapshot.name}"
    return f"{name} sha256:{folder_digest(folder)}"


def model_identities(source: ModelSource, variant: ModelVariant | str) -> dict[str, str]:
    """Each component's identity for a job with ``variant`` ("original" or "f1"), keyed by ``ComponentFiles.name``
    ("vae", "transformer:f1"): the keys job metadata stores."""
    return {files.name: component_identity(source, files) for files in job_files(variant)}
