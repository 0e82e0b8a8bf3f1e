"""The output folder as the gallery sees it: finished videos with their settings, each owned by a login.

Per job the folder holds the final mp4, the cropped input image (PNG) and the video's sidecar JSON (its job spec
and environment fingerprint, see ``framepack_core.jobs.output_description``). A video belongs to the login whose queued
job made it; videos that no queued job claims (made by the CLI, or older than the queue) belong to nobody, and with
logins on only admins see them (``app.access``). Only plain files inside the output folder are ever listed: a
settings file that names a path elsewhere, or a symlink out, is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.access import Viewer
from framepack_core.files import atomic_path
from framepack_core.jobs.output_description import OutputDescription, is_description
from framepack_core.jobs.output_naming import PARTIAL_SUFFIX, output_base

logger = logging.getLogger(__name__)

SETTINGS_SUFFIX = ".json"
INPUT_SUFFIX = ".png"
SNAPSHOT_DIR_PREFIX = ".snapshots-"
SERVED_DIR_PREFIX = "framepack-served-"  # + "<pid>-<random>", in the system's temporary folder
# Snapshot folders of an older version: ".<stamp>_<job id>_seed<seed>.<random>" (tempfile.mkdtemp).
_LEGACY_SNAPSHOT_DIR = re.compile(r"^\.\S*_seed\d+\.[A-Za-z0-9_]{8}$")


@dataclass(frozen=True)
class OutputRecord:
    """A finished generation in the output folder, for the gallery."""

    video: Path
    input_image: Path | None
    settings: dict[str, Any]  # the spec's settings (GenerationRequest field names) and "complete"
    created: float
    owner: str | None = None


def list_outputs(output_dir: Path, owners: Mapping[str, str | None], viewer: Viewer | None = None,
                 limit: int = 100) -> list[OutputRecord]:
    """Finished videos that have a settings file and that ``viewer`` may see, newest first.

    ``owners``: ``output_base(video)`` -> the login whose job made it (from the queue). ``viewer`` None: all.
    """
    records: list[OutputRecord] = []
    root = Path(output_dir)
    if not root.is_dir():
        return records
    root = root.resolve()
    for settings_path in root.glob(f"*{SETTINGS_SUFFIX}"):
        record = _record(root, settings_path, owners)
        if record is not None and (viewer is None or viewer.may_see(record.owner)):
            records.append(record)
    records.sort(key=lambda r: r.created, reverse=True)
    return records[:limit]


def _record(root: Path, settings_path: Path, owners: Mapping[str, str | None]) -> OutputRecord | None:
    try:
        data = json.loads(settings_path.read_text(encoding="utf-8"))
        if is_description(data):  # a video's sidecar
            video = settings_path.with_suffix(".mp4")
            settings = dict(OutputDescription.from_dict(data).spec.settings)
            settings["complete"] = not video.name.endswith(PARTIAL_SUFFIX)
            image = root / (output_base(video) + INPUT_SUFFIX)
        elif isinstance(data, dict):  # the settings file of an older version: {"video": ..., "input_image": ...}
            settings = data
            video = root / str(settings.get("video") or "")
            image = root / str(settings.get("input_image") or "")
        else:
            return None
        created = settings_path.stat().st_mtime
    except (OSError, ValueError, AttributeError, TypeError):  # ValueError includes InvalidInputError
        return None
    video = _inside(root, video)
    if video is None:
        return None
    return OutputRecord(video=video, input_image=_inside(root, image), settings=settings, created=created,
                        owner=owners.get(output_base(video)))


def _inside(root: Path, path: Path) -> Path | None:
    """``path`` if it is a regular file directly in ``root`` (not through a link, not in a hidden folder)."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
        resolved = path.resolve()
    except OSError:
        return None
    return resolved if resolved.parent == root else None


def snapshot_dir(output_dir: Path, base: str) -> Path:
    """A new private folder for one job's per-section snapshots (removed when the job ends)."""
    return Path(tempfile.mkdtemp(prefix=f"{SNAPSHOT_DIR_PREFIX}{base}.", dir=output_dir))


def sweep_snapshot_dirs(output_dir: Path) -> list[Path]:
    """Remove snapshot folders left behind by a crash; call only while no job runs on this folder."""
    swept = []
    root = Path(output_dir)
    for path in root.glob(".*") if root.is_dir() else ():
        if path.is_dir() and not path.is_symlink() and (
                path.name.startswith(SNAPSHOT_DIR_PREFIX) or _LEGACY_SNAPSHOT_DIR.match(path.name)):
            shutil.rmtree(path, ignore_errors=True)
            swept.append(path)
    if swept:
        logger.info("Removed %d snapshot folder(s) left behind by an earlier run", len(swept))
    return swept


def write_png_atomically(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as temporary:
        Image.fromarray(pixels).save(temporary, format="PNG")


class ServedFiles:
    """Copies of output files for Gradio to hand to one browser, outside every folder Gradio serves by path.

    Gradio serves files by path only from its allowed paths; the output folder is not one of them (it holds every
    user's videos and the queue), so a handler that shows a file gives Gradio a link to it in this private folder
    instead; Gradio then copies it into its cache under a content-hash path that only the session it was sent to
    learns. A hard link costs nothing and keeps the data even if the original is removed (a job's snapshots go
    when it ends); across file systems it is a copy. Links older than ``max_age_s`` are swept: by then Gradio has
    long copied them.
    """

    def __init__(self, root: Path | None = None, max_age_s: float = 600.0) -> None:
        if root is None:
            _sweep_orphans()
            root = Path(tempfile.mkdtemp(prefix=f"{SERVED_DIR_PREFIX}{os.getpid()}-"))
        self.root = Path(root)
        self.max_age_s = max_age_s
        self._last_sweep = 0.0

    def serve(self, path: Path | str | None) -> str | None:
        """A path Gradio may read with the data of ``path`` (None when ``path`` is None or already gone)."""
        if path is None:
            return None
        source = Path(path)
        self._sweep()
        folder = Path(tempfile.mkdtemp(dir=self._ensure_root()))
        target = folder / source.name
        try:
            os.link(source, target)
        except FileNotFoundError:
            folder.rmdir()
            return None
        except OSError:  # another file system, or links not allowed: a copy does the same job
            try:
                shutil.copyfile(source, target)
            except FileNotFoundError:
                shutil.rmtree(folder, ignore_errors=True)
                return None
        return str(target)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _ensure_root(self) -> Path:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.root

    def _sweep(self) -> None:
        now = time.time()
        if now - self._last_sweep < 60.0 or not self.root.is_dir():
            return
        self._last_sweep = now
        for folder in self.root.iterdir():
            try:
                if folder.stat().st_mtime < now - self.max_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def _sweep_orphans() -> None:
    """Remove the served-copies folders of app processes that are gone (killed before they could close them):
    they hold links to users' videos."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SERVED_DIR_PREFIX}*"):
        pid = folder.name.removeprefix(SERVED_DIR_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or not folder.is_dir() or folder.is_symlink():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (PermissionError, OverflowError):  # alive (another user's), or no such pid at all
            continue
