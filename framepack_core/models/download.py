"""Fetch the components that are missing or damaged, through huggingface_hub, with byte progress.

``plan_download`` asks the hub for the files of each incomplete component (``hub_files.remote_files``) and leaves
out those already on disk at their full size, so a download that was cut short goes on where it stopped: whole
files are skipped, and huggingface_hub resumes a half-written one from its ``.incomplete`` file. A file on disk
with the wrong size is fetched again from scratch. ``check_space`` refuses before a byte is written when the drive
cannot hold what is left.

Files go where the engine looks for them: ``models_dir/org/name/...`` (``local_dir``), else the Hugging Face cache
at the commit the sizes came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from framepack_core.errors import FramePackError
from framepack_core.models.hub_files import RemoteFile, format_gb, remote_files
from framepack_core.models.inventory import ModelInventory
from framepack_core.models.loading import ModelSource, cache_repo_dir

# Called with each chunk's byte count as it arrives.
ByteProgress = Callable[[int], None]


class NotEnoughSpaceError(FramePackError):
    """The drive that downloads go to cannot hold what is left to fetch."""

    def __init__(self, needed: int, free: int, where: Path) -> None:
        super().__init__(f"Not enough disk space: the missing model files need {format_gb(needed)}, but only "
                         f"{format_gb(free)} is free on the drive of {where}.",
                         f"Free at least {format_gb(needed - free)} there, or download to another drive by giving "
                         "a folder there as {models_dir}.")
        self.needed = needed
        self.free = free
        self.where = where


@dataclass(frozen=True)
class PlannedFile:
    """One file to fetch, of the component named ``component``."""

    remote: RemoteFile
    component: str
    restart: bool  # a copy of the wrong size is there: fetch it again from scratch


@dataclass(frozen=True)
class DownloadPlan:
    """What is left to fetch, and the drive it goes to."""

    files: tuple[PlannedFile, ...]
    models_dir: Path | None
    cache_dir: Path | None
    target: Path
    free_bytes: int

    @property
    def needed_bytes(self) -> int:
        return sum(planned.remote.size for planned in self.files)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(planned.component for planned in self.files))


def local_path(remote: RemoteFile, models_dir: Path | None, cache_dir: Path | None = None) -> Path:
    """Where ``remote`` lies once fetched: under ``models_dir/org/name``, else in the cache's snapshot."""
    if models_dir is not None:
        return Path(models_dir).expanduser() / remote.repo / remote.path
    repo_dir = cache_repo_dir(ModelSource(cache_dir=cache_dir), remote.repo)
    return repo_dir / "snapshots" / remote.revision / remote.path


def plan_download(inventory: ModelInventory, models_dir: Path | None = None,
                  cache_dir: Path | None = None) -> DownloadPlan:
    """The files of ``inventory``'s incomplete components that are not on disk at their full size.

    Asks the hub for the files and their sizes; raises whatever huggingface_hub raises when it cannot be reached.
    """
    incomplete = inventory.incomplete
    listed = remote_files(status.files for status in incomplete) if incomplete else {}
    planned: list[PlannedFile] = []
    for name, found in listed.items():
        for remote in found:
            path = local_path(remote, models_dir, cache_dir)
            on_disk = path.stat().st_size if path.is_file() else None
            if on_disk != remote.size:
                planned.append(PlannedFile(remote, name, restart=on_disk is not None))
    return DownloadPlan(tuple(planned), models_dir, cache_dir, inventory.target, inventory.free_bytes)


def check_space(plan: DownloadPlan) -> None:
    """Raise ``NotEnoughSpaceError`` when the target drive cannot hold what ``plan`` fetches."""
    if plan.needed_bytes > plan.free_bytes:
        raise NotEnoughSpaceError(plan.needed_bytes, plan.free_bytes, plan.target)


def _byte_counter(report: ByteProgress) -> type:
    """A tqdm class that shows nothing and hands each update to ``report`` (huggingface_hub's ``tqdm_class``)."""
    from tqdm.auto import tqdm

    class ByteCounter(tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            if kwargs.get("initial"):  # bytes resumed from an .incomplete file, already counted in the plan
                report(int(kwargs["initial"]))

        def update(self, n: float | None = 1) -> bool | None:
            report(int(n or 0))
            return super().update(n)

    return ByteCounter


def download(plan: DownloadPlan, progress: ByteProgress | None = None) -> None:
    """Fetch every file of ``plan``, one at a time, reporting each chunk's bytes to ``progress``."""
    from huggingface_hub import hf_hub_download

    counter = _byte_counter(progress or (lambda n: None))
    for planned in plan.files:
        remote = planned.remote
        if plan.models_dir is not None:
            place = {"local_dir": Path(plan.models_dir).expanduser() / remote.repo, "revision": remote.revision}
        else:
            # By branch, not by commit: only then does huggingface_hub point the cache's refs/main at the snapshot,
            # which is how the engine finds it.
            place = {"cache_dir": plan.cache_dir}
        hf_hub_download(remote.repo, remote.path, force_download=planned.restart, tqdm_class=counter, **place)
