"""The files a Ray job needs and makes, moved as bytes: a Ray node shares no file system with the app.

Both sides agree on one layout, relative to the folder the actor makes for each job (its "job root")::

    inputs/<n>/<name>   the request's input files (start and end image, keyframes, the clip to extend, LoRAs)
    job/...             the job folder (checkpoint.safetensors, job.json, segments/, partial.mp4)
    output/<name>       the video, its partial video and their sidecar JSON files
    snapshots/...       the per-section snapshots, when the caller asked for them
    latents/<name>      the latents file, when the request asks for one

The app sends its files under these relative names (``outbound_job``); the actor writes them under its root and
sends back, as relative names, what the engine wrote or deleted there (``FolderWatch``); the app writes those into
its own folders (``AppLayout``). Nothing here imports Ray, so it is tested and used without it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any

from framepack_core.events import EngineEvent
from framepack_core.files import write_bytes_atomically
from framepack_core.jobs.output_description import sidecar_path
from framepack_core.request import GenerationRequest

INPUTS, JOB, OUTPUT, SNAPSHOTS, LATENTS = "inputs", "job", "output", "snapshots", "latents"
WATCHED = (JOB, OUTPUT, SNAPSHOTS, LATENTS)  # what the engine writes; the inputs are only read
CHECKPOINT_NAME = "checkpoint.safetensors"
JOB_RECORD_NAME = "job.json"

# Relative POSIX path -> the file's bytes, or None for a file the engine deleted.
FileBatch = dict[str, "bytes | None"]


@dataclass(frozen=True)
class RemoteJob:
    """One job as the actor receives it: the request's paths are relative names in the layout above."""

    request: GenerationRequest
    job_id: str
    files: FileBatch
    has_job_dir: bool
    has_snapshot_dir: bool
    cancelled: bool = False  # cancelled before it was sent: the engine stops before its first model loads


def map_request_paths(request: GenerationRequest, move: Callable[[Path], Path]) -> GenerationRequest:
    """``request`` with every file path it names (inputs and outputs) replaced by ``move(path)``."""

    def moved(path: Path | None) -> Path | None:
        return None if path is None else move(Path(path))

    return replace(
        request, image=moved(request.image), end_image=moved(request.end_image),
        extend_video=moved(request.extend_video), output=moved(request.output),
        save_latents=moved(request.save_latents),
        keyframes=tuple(replace(keyframe, image=moved(keyframe.image)) for keyframe in request.keyframes),
        loras=tuple(replace(lora, path=moved(lora.path)) for lora in request.loras))


class AppLayout:
    """Where each relative name of the layout lives on the app's side, for one job."""

    def __init__(self, output: Path, job_dir: Path | None, snapshot_dir: Path | None,
                 save_latents: Path | None) -> None:
        self.output = Path(output)
        self.roots = {OUTPUT: self.output.parent, JOB: job_dir, SNAPSHOTS: snapshot_dir,
                      LATENTS: None if save_latents is None else Path(save_latents).parent}
        self.inputs: dict[str, Path] = {}  # relative name -> the app's file it is a copy of

    def app_path(self, relative: str) -> Path | None:
        """The app's path for a relative name (None for one the app has no place for)."""
        parts = PurePosixPath(relative).parts
        # A name that climbs out of its folder is never written, whatever a node sends.
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
            return None
        if parts[0] == INPUTS:
            return self.inputs.get(relative)
        root = self.roots.get(parts[0])
        return None if root is None else root.joinpath(*parts[1:])

    def write(self, batch: FileBatch, remote_root: str) -> None:
        """Write (atomically) or delete on the app's side what the engine wrote or deleted on the actor's."""
        for relative, data in sorted(batch.items()):
            target = self.app_path(relative)
            if target is None or PurePosixPath(relative).parts[0] == INPUTS:
                continue
            if data is None:
                target.unlink(missing_ok=True)
                continue
            if PurePosixPath(relative).parts[:1] == (JOB,) and target.name == CHECKPOINT_NAME:
                data = rewrite_finished_output(data, lambda path: str(self.from_remote(Path(path), remote_root)))
            elif PurePosixPath(relative).parts[:1] == (JOB,) and target.name == JOB_RECORD_NAME:
                data = _record_with_output(data, self.output)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(target, data, private=PurePosixPath(relative).parts[0] == JOB)

    def from_remote(self, path: Path, remote_root: str) -> Path:
        """The app's path for a path on the actor's node (itself when it is not in the job root)."""
        try:
            relative = PurePosixPath(Path(path).relative_to(remote_root)).as_posix()
        except ValueError:
            return path
        return self.app_path(relative) or path

    def event_for_app(self, event: EngineEvent, remote_root: str) -> EngineEvent:
        """``event`` with its paths (and paths quoted in its texts) turned into the app's."""
        changes: dict[str, Any] = {}
        for item in fields(event):
            value = getattr(event, item.name)
            if isinstance(value, Path):
                changes[item.name] = self.from_remote(value, remote_root)
            elif isinstance(value, str) and remote_root in value:
                changes[item.name] = self.text_for_app(value, remote_root)
        return replace(event, **changes) if changes else event

    def text_for_app(self, text: str, remote_root: str) -> str:
        """``text`` with the actor's folders it quotes named as the app's."""
        for name, root in self.roots.items():
            if root is not None:
                text = text.replace(f"{remote_root}/{name}", str(root))
        return text


def outbound_job(request: GenerationRequest, job_id: str, layout: AppLayout, job_dir: Path | None,
                 snapshot_dir: Path | None) -> RemoteJob:
    """The job to send: the request with relative paths, the bytes of its input files and of the job folder.

    An input file the app cannot read keeps its own path, so the engine refuses it with its usual message."""
    files: FileBatch = {}

    def send_input(path: Path) -> Path:
        if not path.is_file():
            return path
        relative = f"{INPUTS}/{len(layout.inputs)}/{path.name}"
        layout.inputs[relative] = path
        files[relative] = path.read_bytes()
        # A clip to extend may describe itself only in its sidecar, which the engine then reads.
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            files[f"{INPUTS}/{len(layout.inputs) - 1}/{sidecar.name}"] = sidecar.read_bytes()
        return Path(relative)

    remote = map_request_paths(replace(request, output=None, save_latents=None), send_input)
    remote = replace(remote, output=Path(OUTPUT, layout.output.name),
                     save_latents=None if request.save_latents is None
                     else Path(LATENTS, Path(request.save_latents).name))
    if job_dir is not None:
        files.update(job_folder_files(job_dir, layout))
    return RemoteJob(remote, job_id, files, has_job_dir=job_dir is not None,
                     has_snapshot_dir=snapshot_dir is not None)


def job_folder_files(job_dir: Path, layout: AppLayout) -> FileBatch:
    """The job folder's files (all but the lock and temporary files), so a job started elsewhere resumes. A
    finished job's checkpoint names its video relatively, and the video goes with it."""
    files: FileBatch = {}
    for path in _visible_files(Path(job_dir)):
        relative = f"{JOB}/{path.relative_to(job_dir).as_posix()}"
        data = path.read_bytes()
        if path.name == CHECKPOINT_NAME and path.parent == Path(job_dir):
            data = rewrite_finished_output(data, lambda finished: _send_finished(Path(finished), layout, files))
        files[relative] = data
    return files


def _send_finished(finished: Path, layout: AppLayout, files: FileBatch) -> str:
    if not finished.is_file():
        return str(finished)  # the engine says the video is gone, as it would here
    files[f"{OUTPUT}/{finished.name}"] = finished.read_bytes()
    if sidecar_path(finished).is_file():
        files[f"{OUTPUT}/{sidecar_path(finished).name}"] = sidecar_path(finished).read_bytes()
    return f"{OUTPUT}/{finished.name}"


def write_received(root: Path, files: FileBatch) -> None:
    """The actor's side: write the app's files under the job root; a finished checkpoint's relative video name
    becomes a path under the root."""
    for relative, data in files.items():
        parts = PurePosixPath(relative).parts
        if data is None or not parts or ".." in parts or PurePosixPath(relative).is_absolute():
            continue
        target = root.joinpath(*parts)
        if parts[0] == JOB and target.name == CHECKPOINT_NAME:
            data = rewrite_finished_output(data, lambda finished: str(root / finished))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


class FolderWatch:
    """The actor's side: which files under the root's watched folders changed since the last look."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen = self._signatures()

    def changes(self) -> FileBatch:
        now = self._signatures()
        batch: FileBatch = {relative: None for relative in self._seen.keys() - now.keys()}
        for relative, signature in now.items():
            if self._seen.get(relative) != signature:
                try:
                    batch[relative] = (self.root / relative).read_bytes()
                except OSError:
                    continue  # deleted between the listing and the read: the next look says so
        self._seen = now
        return batch

    def _signatures(self) -> dict[str, tuple[int, int, int]]:
        found = {}
        for name in WATCHED:
            for path in _visible_files(self.root / name):
                stat = path.stat()
                found[path.relative_to(self.root).as_posix()] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        return found


def _visible_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder``, leaving out hidden names at any level: the job folder's lock, temporary files
    being written, a writer's hidden work folder."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path


def rewrite_finished_output(data: bytes, move: Callable[[str], str]) -> bytes:
    """A job folder checkpoint (safetensors) whose recorded finished video path is ``move(path)``; the tensors
    are untouched (their offsets count from the end of the header). Data that is no checkpoint stays as it is."""
    try:
        (header_size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_size])
        state = json.loads(header["__metadata__"]["state"])
    except (struct.error, ValueError, KeyError, TypeError):
        return data
    if not state.get("finished_output"):
        return data
    state["finished_output"] = move(state["finished_output"])
    header["__metadata__"]["state"] = json.dumps(state)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors pads its header to 8 bytes
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + header_size:]


def _record_with_output(data: bytes, output: Path) -> bytes:
    """job.json naming the app's video rather than the actor's, for a later run of the job on this side."""
    try:
        record = json.loads(data)
    except ValueError:
        return data
    if not isinstance(record, dict):
        return data
    record["output"] = str(output)
    return json.dumps(record, indent=2).encode()
