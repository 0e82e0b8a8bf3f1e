"""How many bytes each component is on the hub: its files' sizes from the hub's metadata, else an estimate.

The hub answers ``model_info(files_metadata=True)`` with every file of a repository and its size (one request per
repository); a component's files are those its ``allow_patterns`` match, as for ``snapshot_download``. Without a
network the built-in real configs give the parameter count, and the dtype the real files are stored in gives the
bytes (``framepack_core.models.sizes``): the weights are all but a few MB of a component.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from framepack_core.models.components import WEIGHT_COMPONENTS
from framepack_core.models.loading import ComponentFiles
from framepack_core.models.sizes import SAFETENSORS_DTYPES, sizes_from_config

logger = logging.getLogger(__name__)

GB = 1_000_000_000  # decimal, as the hub and disk vendors count
HUB_TIMEOUT_S = 10.0

_DTYPE_BYTES = MappingProxyType({name: itemsize for name, itemsize in SAFETENSORS_DTYPES.values()})


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository on the hub, at the commit ``revision``."""

    repo: str
    path: str  # inside the repository, "vae/config.json"
    size: int
    revision: str


def belongs_to(files: ComponentFiles, path: str) -> bool:
    """Whether the repository file ``path`` is one of ``files``' (the same matching as ``snapshot_download``)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in files.allow_patterns)


def remote_files(components: Iterable[ComponentFiles],
                 timeout: float | None = HUB_TIMEOUT_S) -> dict[str, tuple[RemoteFile, ...]]:
    """Each component's files on the hub, by ``ComponentFiles.name``; asks the hub once per repository.

    Raises whatever huggingface_hub raises when the hub cannot be reached.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    listings: dict[str, tuple[RemoteFile, ...]] = {}
    found: dict[str, tuple[RemoteFile, ...]] = {}
    for files in components:
        if files.repo not in listings:
            info = api.model_info(files.repo, files_metadata=True, timeout=timeout)
            listings[files.repo] = tuple(RemoteFile(files.repo, sibling.rfilename, int(sibling.size or 0), info.sha)
                                         for sibling in info.siblings or ())
        found[files.name] = tuple(remote for remote in listings[files.repo] if belongs_to(files, remote.path))
    return found


def estimated_bytes(files: ComponentFiles) -> int:
    """The component's size from its built-in real config: its parameters times the bytes per parameter of the
    dtype the real files are stored in. 0 for the tokenizers and the image processor, which hold no weights."""
    if files.component not in WEIGHT_COMPONENTS:
        return 0
    size = sizes_from_config(files.component)
    return size.parameters * _DTYPE_BYTES.get(size.disk_dtype, 2)


def download_bytes(components: tuple[ComponentFiles, ...], offline: bool) -> tuple[int, bool]:
    """About how many bytes fetching ``components`` whole takes, and whether the hub said so (else an estimate).

    Asks the hub unless ``offline``; a hub that cannot be reached falls back to the estimate.
    """
    if not offline:
        try:
            listed = remote_files(components)
        except Exception:  # any failure to ask the hub leaves the estimate
            logger.debug("the hub's file sizes are not available", exc_info=True)
        else:
            return sum(remote.size for found in listed.values() for remote in found), True
    return sum(estimated_bytes(files) for files in components), False


def format_gb(size: int) -> str:
    """25_700_000_000 -> "25.7 GB"; below 0.1 GB, the MB."""
    if size < GB // 10:
        return f"{size / 1_000_000:.1f} MB"
    return f"{size / GB:.1f} GB"
