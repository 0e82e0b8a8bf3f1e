"""The files one job writes: its mp4 (built section by section), the sidecar JSON next to every mp4, the job
folder's checkpoints, the UI's snapshots, the latents file, and what is left of them when a job stops early."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from framepack_core.errors import OutputWriteError
from framepack_core.files import atomic_path
from framepack_core.jobs.checkpoint import JobDirectory, SectionCheckpoint
from framepack_core.jobs.output_description import OutputDescription, container_metadata, write_sidecar
from framepack_core.jobs.output_naming import DEFAULT_OUTPUT_DIR, output_path, partial_output_path
from framepack_core.jobs.reroll import keep_section_state
from framepack_core.jobs.spec import JobSpec
from framepack_core.media.video_io import Order, SectionVideoWriter, SectionWritten, WriterState
from framepack_core.request import GenerationRequest
from framepack_core.sampling.packing import LatentHistory

logger = logging.getLogger(__name__)


class JobFiles:
    """Everything a job writes, from claiming its job folder to the final or the partial video.

    Lifecycle: ``claim`` (the spec; with a job folder, the checkpoint to resume from), ``describe_as`` (once the
    transformer is loaded), ``open_writer``, ``add_section`` per section, then ``finish``; or ``close_partial``
    when the job stops early. ``close`` always, last.
    """

    def __init__(self, job_id: str, request: GenerationRequest, job_dir: JobDirectory | None = None,
                 snapshot_dir: Path | None = None) -> None:
        self.job_id = job_id
        self.job_dir = job_dir
        self.snapshot_dir = snapshot_dir
        self._given_output = Path(request.output) if request.output else None
        self.output = self._given_output or output_path(DEFAULT_OUTPUT_DIR, seed=request.seed,
                                                        model=request.model.value)
        self.sidecar_problem: str | None = None
        self._spec: JobSpec | None = None
        self._description: OutputDescription | None = None  # spec + fingerprint, once the transformer is loaded
        self._writer: SectionVideoWriter | None = None

    @property
    def sections_done(self) -> int:
        return 0 if self._writer is None else self._writer.sections_added

    def claim(self, spec: JobSpec) -> SectionCheckpoint | None:
        """Record the job's spec and claim the job folder, if any: a new job records its spec there, the same spec
        gets its last checkpoint back (also that of a finished job), another spec is refused."""
        self._spec = spec
        if self.job_dir is None:
            return None
        # Without an output path a rerun writes where the first run would have (its default name has a time stamp).
        self.output, checkpoint = self.job_dir.open(spec, self._given_output, default_output=self.output)
        return checkpoint

    def describe_as(self, description: OutputDescription) -> None:
        """From now on every mp4 carries ``description`` in its metadata and in a sidecar JSON."""
        self._description = description

    def record_cache(self, stats: Mapping[str, Any]) -> None:
        """Add the step cache's counts (transformer calls, skipped calls) to the fingerprint's ``cache``, for the
        videos written from now on."""
        if self._description is None:
            return
        fingerprint = dict(self._description.fingerprint)
        fingerprint["cache"] = dict(fingerprint.get("cache") or {}) | dict(stats)
        self._description = replace(self._description, fingerprint=fingerprint)

    def open_writer(self, order: Order, overlap_frames: int, crf: int, resume: WriterState | None = None) -> None:
        """Open the section writer: new, in the job folder, or resumed from a checkpoint's ``resume`` state."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._writer = SectionVideoWriter.open(self.output, order, overlap_frames, crf=crf, resume=resume,
                                               work_dir=None if self.job_dir is None else self.job_dir.segments_dir)

    def add_section(self, pixels: torch.Tensor, history: LatentHistory, generator: torch.Generator,
                    total_sections: int) -> SectionWritten:
        """Write a decoded section; with a job folder, checkpoint the job after it."""
        assert self._writer is not None
        written = self._writer.add_section(pixels)
        if self.job_dir is not None:
            self._save_checkpoint(history, generator, total_sections)
        return written

    def snapshot(self, section: int) -> Path | None:
        """A playable mp4 of the video so far in the snapshot folder, if the caller asked for one."""
        if self.snapshot_dir is None:
            return None
        assert self._writer is not None
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        # A new name per section, so a browser never shows a cached older snapshot.
        snapshot = self.snapshot_dir / f"{self.job_id}_{section:03d}.mp4"
        if self.job_dir is not None:  # the checkpoint just wrote this very video: no second remux
            _link_or_copy(self.job_dir.partial_path, snapshot)
        else:
            self._writer.write_snapshot(snapshot)
        return snapshot

    def finish(self, history: LatentHistory, generator: torch.Generator, total_sections: int) -> tuple[Path, int]:
        """Write the final video and its sidecar; returns its path and its frame count."""
        assert self._writer is not None
        video_frames = self._writer.total_frames
        if self.job_dir is not None:
            # Recorded before the segments go: a rerun then reports the finished video instead of redoing it.
            self._save_checkpoint(history, generator, total_sections, finished_output=self.output)
        output = self._describe(self._writer.finalize(metadata=self._metadata()))
        if self.job_dir is not None:
            self.job_dir.partial_path.unlink(missing_ok=True)
        return output, video_frames

    def close_partial(self) -> Path | None:
        """After a cancel or a failure: a playable video of the finished sections (None if none finished). With a
        job folder the job stays resumable: the video is a snapshot and the segments stay."""
        writer = self._writer
        if self.job_dir is not None and writer is not None and self.sections_done:
            try:
                return self._describe(writer.write_snapshot(partial_output_path(self.output),
                                                            metadata=self._metadata()))
            except Exception:  # noqa: BLE001 - the original error matters more than the partial video
                logger.exception("Could not write the partial video of job %s", self.job_id)
                return None
        if writer is None or self.sections_done == 0:
            if writer is not None:
                writer.discard()
            return None
        try:
            writer.output_path = partial_output_path(self.output)
            return self._describe(writer.finalize(metadata=self._metadata()))
        except Exception:  # noqa: BLE001 - the original error matters more than the partial video
            logger.exception("Could not write the partial video of job %s", self.job_id)
            writer.discard()  # e.g. a full disk: leave no hidden segment folder behind
            return None

    def close(self) -> None:
        """Release the job folder for the next run."""
        if self.job_dir is not None:
            self.job_dir.close()

    def _save_checkpoint(self, history: LatentHistory, generator: torch.Generator, total_sections: int,
                         finished_output: Path | None = None) -> None:
        assert self.job_dir is not None and self._spec is not None and self._writer is not None
        if finished_output is None:  # before the checkpoint: a state it does not list yet is simply redone
            keep_section_state(self.job_dir, self._spec.digest, self._writer, history, generator)
        self.job_dir.save(SectionCheckpoint(
            spec_digest=self._spec.digest, sections_done=self.sections_done, total_sections=total_sections,
            history_latents=history.history_latents, total_generated_latent_frames=history.total_generated_latent_frames,
            generator_state=generator.get_state(), writer=self._writer.state(),
            finished_output=None if finished_output is None else str(finished_output)))
        if finished_output is None:
            self._writer.write_snapshot(self.job_dir.partial_path)

    def _metadata(self) -> dict[str, str]:
        """The mp4 tags that describe this job (none before the description exists)."""
        return container_metadata(self._description) if self._description is not None else {}

    def _describe(self, video: Path) -> Path:
        """Write ``video``'s sidecar JSON (the same description as its metadata). A failure is logged, not raised:
        the video is written and carries the description itself."""
        if self._description is not None:
            try:
                write_sidecar(video, self._description)
            except OSError as error:
                self.sidecar_problem = f"Could not write the settings file next to {video}: {error}"
                logger.warning("%s (the video's metadata still describes it)", self.sidecar_problem)
        return video


def save_latents(path: Path, history_latents: torch.Tensor, start_latent: torch.Tensor,
                 request: GenerationRequest) -> Path:
    """Write the final latents as safetensors, atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"history_latents": history_latents.float().contiguous(), "start_latent": start_latent.float().contiguous()}
    metadata = {"model": request.model.value, "seed": str(request.seed), "steps": str(request.steps)}
    try:
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)
    except OSError as error:
        raise OutputWriteError(f"Could not write the latents to {path}: {error.strerror or error}",
                               "Free some disk space or choose another {save_latents} path.") from error
    return path


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (it keeps this version when ``source`` is later replaced by a
    rename), or a copy where the file system has no hard links."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
