"""Job folders: a job's spec and, after every finished section, what the rest of the job needs to resume.

Layout of a job folder::

    job.json                 the spec and the output path (written once, when the job is first started)
    checkpoint.safetensors   after each section: history latents, the generator state, the writer's pending
                             edge frames; its metadata holds the counters and the segment list
    segments/seg_NNNNN.mp4   the video's finished frames, one file per section (each frame encoded once)
    partial.mp4              a playable video of the sections so far
    .lock                    held while a process runs the job (a second one is refused)

Every file is written to a temporary name, flushed to disk and renamed over the old one, so a kill -9, a crash or
a power cut leaves either the previous checkpoint or the new one, never half of one. Segment files are written
before the checkpoint that lists them; a segment the checkpoint does not list is from a section that never
finished, and ``SectionVideoWriter.open(..., resume=...)`` deletes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from framepack_core.errors import InvalidInputError, OutputWriteError
from framepack_core.files import write_bytes_atomically
from framepack_core.jobs.spec import JobSpec
from framepack_core.media.video_io import WriterState

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class SectionCheckpoint:
    """The state of a job after ``sections_done`` of ``total_sections`` sections."""

    spec_digest: str
    sections_done: int
    total_sections: int
    history_latents: torch.Tensor
    total_generated_latent_frames: int
    generator_state: torch.Tensor  # torch.Generator.get_state(): uint8
    writer: WriterState
    finished_output: str | None = None  # set once the final video is written


class JobDirectory:
    """One job's folder. ``open`` claims it for a spec (refusing a different one); ``save`` checkpoints."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock: Any = None

    @property
    def segments_dir(self) -> Path:
        return self.path / "segments"

    @property
    def partial_path(self) -> Path:
        return self.path / "partial.mp4"

    @property
    def _job_file(self) -> Path:
        return self.path / "job.json"

    @property
    def _checkpoint_file(self) -> Path:
        return self.path / "checkpoint.safetensors"

    def open(self, spec: JobSpec, output: Path | None, *, default_output: Path) -> tuple[Path, SectionCheckpoint | None]:
        """Claim the folder for ``spec``: returns the output path (``output`` if given, else the one recorded when
        the job was first started, else ``default_output``) and the last checkpoint, if any. A folder holding another job, or one in use by
        another process, is refused with ``InvalidInputError`` (field ``job_dir``)."""
        self.hold()
        try:
            return self._claim(spec, output, default_output)
        except BaseException:
            self.close()
            raise

    def hold(self) -> None:
        """Take the folder's lock (made if missing) until ``close``: a second run of the job is refused, and the
        queue knows the job is alive. ``InvalidInputError`` (field ``job_dir``) when it cannot be made or another
        process holds it."""
        from filelock import FileLock, Timeout

        if self.path.exists() and not self.path.is_dir():
            raise InvalidInputError("job_dir", f"{self.path} is a file", "Give a folder for the job's checkpoints.")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InvalidInputError("job_dir", f"cannot create {self.path}: {error.strerror or error}",
                                    "Give a folder you can write to.") from error
        lock = FileLock(str(self.path / ".lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise InvalidInputError("job_dir", f"{self.path} is in use by another running job",
                                    "Wait for it to end, or give another {job_dir}.") from None
        self._lock = lock

    def _claim(self, spec: JobSpec, output: Path | None, default_output: Path) -> tuple[Path, SectionCheckpoint | None]:
        if not self._job_file.exists():
            output = output or default_output
            record = {"spec": spec.to_dict(), "output": str(output)}
            write_bytes_atomically(self._job_file, json.dumps(record, indent=2).encode(), private=True)
            self._checkpoint_file.unlink(missing_ok=True)  # a stale one from a job whose job.json was deleted
            return output, None
        try:
            record = json.loads(self._job_file.read_text(encoding="utf-8"))
            recorded = JobSpec.from_dict(record["spec"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InvalidInputError("job_dir", f"{self._job_file} is unreadable ({error})",
                                    "Delete the folder to start the job over, or give another {job_dir}.") from None
        differences = recorded.differences(spec)
        if differences:
            shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
            raise InvalidInputError("job_dir", f"{self.path} holds a different job ({shown})",
                                    "Run the same settings, image and models again to resume it, give another "
                                    "{job_dir}, or delete the folder to start over.")
        recorded_output = record.get("output")
        output = output or (Path(recorded_output) if recorded_output else default_output)
        return output, self.load(spec.digest)

    def load(self, spec_digest: str) -> SectionCheckpoint | None:
        if not self._checkpoint_file.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self._checkpoint_file), framework="pt") as handle:
                meta = json.loads(handle.metadata()["state"])
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as error:  # noqa: BLE001 - any damage means the same: this checkpoint cannot be used
            raise InvalidInputError("job_dir", f"the checkpoint {self._checkpoint_file} is damaged ({error})",
                                    "Delete the folder to start the job over.") from None
        if meta.get("version") != CHECKPOINT_VERSION or meta.get("spec_digest") != spec_digest:
            raise InvalidInputError("job_dir", f"the checkpoint in {self.path} belongs to another job or version",
                                    "Delete the folder to start the job over.")
        writer = meta["writer"]
        return SectionCheckpoint(
            spec_digest=spec_digest, sections_done=meta["sections_done"], total_sections=meta["total_sections"],
            history_latents=tensors["history_latents"],
            total_generated_latent_frames=meta["total_generated_latent_frames"],
            generator_state=tensors["generator_state"],
            writer=WriterState(segments=tuple((name, frames) for name, frames in writer["segments"]),
                               pending=tensors.get("pending"),
                               size=None if writer["size"] is None else tuple(writer["size"]),
                               sections=writer["sections"], final_frames=writer["final_frames"]),
            finished_output=meta.get("finished_output"))

    def save(self, checkpoint: SectionCheckpoint) -> None:
        from safetensors.torch import save

        writer = checkpoint.writer
        tensors = {"history_latents": checkpoint.history_latents.contiguous(),
                   "generator_state": checkpoint.generator_state.contiguous()}
        if writer.pending is not None:
            tensors["pending"] = writer.pending.contiguous()
        meta = {"version": CHECKPOINT_VERSION, "spec_digest": checkpoint.spec_digest,
                "sections_done": checkpoint.sections_done, "total_sections": checkpoint.total_sections,
                "total_generated_latent_frames": checkpoint.total_generated_latent_frames,
                "finished_output": checkpoint.finished_output,
                "writer": {"segments": [list(s) for s in writer.segments], "size": writer.size,
                           "sections": writer.sections, "final_frames": writer.final_frames}}
        try:
            write_bytes_atomically(self._checkpoint_file, save(tensors, metadata={"state": json.dumps(meta)}),
                                   private=True)
        except OSError as error:
            raise OutputWriteError(f"Could not write the checkpoint to {self._checkpoint_file}: "
                                   f"{error.strerror or error}",
                                   "Free some disk space; the job resumes from its last checkpoint when run again "
                                   "with the same {job_dir}.") from error

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
