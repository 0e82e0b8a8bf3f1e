"""Re-roll a job from a section: a new job folder that starts from the old job's state after the sections before
it, so those are kept bit-identical (latents and frames) and never computed again.

What a job folder keeps for this, besides its checkpoint (``framepack_core.jobs.checkpoint``)::

    sections/state_NNNNN.safetensors  after section N: the generator state (5,056 bytes, the CPU Mersenne
                                      Twister) and, in its metadata, the writer's segment list and counters
                                      and the latent frame count: about 5.5 KB a section
    sections/seg_NNNNN.mp4            hard links to the finished video segments, so they outlive the final join
                                      (which deletes ``segments/``); no extra disk until the job folder goes

Everything else is derived: the history latents after K-1 sections are cut from the latest checkpoint's (the
original model prepends each section, F1 appends it), and the writer's pending edge frames (the frames the next
section blends into) are decoded again from those latents when the re-roll starts
(``framepack_core.pipeline.reroll_resume``): one VAE decode instead of storing about 80 MB of float pixels per
section at 640x640. The re-roll's folder gets a job.json with the old spec plus the re-roll, a checkpoint after
K-1 sections, and links to the kept segments; the engine then resumes it like any interrupted job. The old folder
and its video are not touched.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from framepack_core.errors import InvalidInputError
from framepack_core.files import write_bytes_atomically
from framepack_core.jobs.checkpoint import JobDirectory, SectionCheckpoint
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.media.video_io import SectionVideoWriter, WriterState
from framepack_core.models.components import ModelVariant
from framepack_core.request import GenerationRequest, Reroll
from framepack_core.sampling.packing import HISTORY_CONTEXT_FRAMES, LatentHistory
from framepack_core.sampling.rerolls import RerollSpan, check_reroll_section, reroll_span, with_reroll
from framepack_core.sampling.schedule import total_latent_sections

SECTIONS_DIR = "sections"


@dataclass(frozen=True)
class SectionState:
    """A job's state after ``section`` sections that its checkpoint does not keep once it moves on."""

    spec_digest: str
    section: int
    generator_state: torch.Tensor  # torch.Generator.get_state(): uint8
    total_generated_latent_frames: int
    writer: WriterState  # without its pending edge frames (decoded again when needed)


def section_state_path(job_dir: Path, section: int) -> Path:
    return Path(job_dir) / SECTIONS_DIR / f"state_{section:05d}.safetensors"


def save_section_state(job_dir: Path, state: SectionState, segments_dir: Path) -> None:
    """Keep the state after ``state.section`` sections and hard links to the segments finished so far."""
    from safetensors.torch import save

    folder = Path(job_dir) / SECTIONS_DIR
    folder.mkdir(exist_ok=True)
    for name, _ in state.writer.segments:
        _link(Path(segments_dir) / name, folder / name)
    writer = state.writer
    meta = {"spec_digest": state.spec_digest, "section": state.section,
            "total_generated_latent_frames": state.total_generated_latent_frames,
            "writer": {"segments": [list(s) for s in writer.segments], "size": writer.size,
                       "sections": writer.sections, "final_frames": writer.final_frames}}
    data = save({"generator_state": state.generator_state.contiguous()}, metadata={"state": json.dumps(meta)})
    write_bytes_atomically(section_state_path(job_dir, state.section), data, private=True)


def keep_section_state(job_dir: JobDirectory, spec_digest: str, writer: SectionVideoWriter, history: LatentHistory,
                       generator: torch.Generator) -> None:
    """After each section of a job with a folder: what a re-roll from the next section will need."""
    state = writer.state()
    save_section_state(job_dir.path, SectionState(
        spec_digest, state.sections, generator.get_state(), history.total_generated_latent_frames,
        replace(state, pending=None)), job_dir.segments_dir)


def load_section_state(job_dir: Path, section: int) -> SectionState | None:
    """The state after ``section`` sections, or None when the folder has none (or a damaged one)."""
    from safetensors import safe_open

    path = section_state_path(job_dir, section)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["state"])
            generator_state = handle.get_tensor("generator_state")
        writer = meta["writer"]
        return SectionState(
            spec_digest=meta["spec_digest"], section=meta["section"], generator_state=generator_state,
            total_generated_latent_frames=meta["total_generated_latent_frames"],
            writer=WriterState(segments=tuple((name, frames) for name, frames in writer["segments"]), pending=None,
                               size=None if writer["size"] is None else tuple(writer["size"]),
                               sections=writer["sections"], final_frames=writer["final_frames"]))
    except Exception:  # noqa: BLE001 - any damage means the same: this state cannot be used
        return None


def history_before(model: ModelVariant, history_latents: torch.Tensor, total_generated_latent_frames: int,
                   kept_latent_frames: int) -> torch.Tensor:
    """The history latents as they were when ``kept_latent_frames`` had been generated, cut from a later
    history: the original model prepends each section (its oldest sections and the zero tail are at the end),
    F1 appends (the zero head, the start latent and the oldest sections are at the front)."""
    if ModelVariant(model) == ModelVariant.ORIGINAL:
        return history_latents[:, :, total_generated_latent_frames - kept_latent_frames:].clone()
    return history_latents[:, :, :HISTORY_CONTEXT_FRAMES + kept_latent_frames].clone()


@dataclass(frozen=True)
class RerollJob:
    """A prepared re-roll: its folder, its spec (the old one plus the re-roll), the previous video and what
    changes."""

    job_dir: Path
    spec: JobSpec
    previous_output: Path | None
    span: RerollSpan


def read_job_record(job_dir: Path) -> tuple[JobSpec, Path | None]:
    """A job folder's spec and recorded output (``InvalidInputError`` naming ``job_dir`` when it has none)."""
    job_file = Path(job_dir) / "job.json"
    if not job_file.is_file():
        raise InvalidInputError("job_dir", f"{job_dir} is not a job folder (it has no job.json)",
                                "Give the {job_dir} a job ran in.")
    try:
        record = json.loads(job_file.read_text(encoding="utf-8"))
        spec = JobSpec.from_dict(record["spec"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidInputError("job_dir", f"{job_file} is unreadable ({error})") from None
    output = record.get("output")
    return spec, Path(output) if output else None


def prepare_reroll(source: Path, target: Path, from_section: int, seed: int, prompt: str | None, *,
                   image: Path | None = None) -> RerollJob:
    """Make ``target`` a job folder for ``source``'s job re-rolled from ``from_section`` with ``seed`` (and
    ``prompt``). ``image``: the start image the caller will run it with, checked against the job's. Refused with
    ``InvalidInputError``: a folder that is no job's, in use by a running job, made from another image, or without
    the sections before ``from_section`` (``job_dir``); a section the job does not have (``reroll_from``)."""
    from filelock import FileLock, Timeout

    GenerationRequest(image=Path("spec"), rerolls=(Reroll(from_section, seed, prompt),)).validated()  # its types
    source = Path(source)
    spec, previous_output = read_job_record(source)
    if image is not None and file_sha256(Path(image)) != spec.image_sha256:
        raise InvalidInputError("job_dir", f"{source} holds a job made from another start image (SHA-256 "
                                           f"{spec.image_sha256[:12]}...)",
                                "Give that job's own start image, or the {job_dir} of this image's job.")
    settings = spec.settings
    total = total_latent_sections(settings["seconds"], settings["latent_window_size"])
    check_reroll_section(from_section, total)
    lock = FileLock(str(source / ".lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InvalidInputError("job_dir", f"{source} is in use by a running job",
                                "Wait for it to end (or stop it), then re-roll it.") from None
    try:
        kept = _kept_state(source, spec, from_section, total)
        new_spec = rerolled_spec(spec, from_section, seed, prompt)
        _write_folder(Path(target), new_spec, source, kept, from_section, total)
    finally:
        lock.release()
    span = reroll_span(settings["model"], settings["seconds"], settings["latent_window_size"], from_section)
    return RerollJob(Path(target), new_spec, previous_output, span)


def rerolled_spec(spec: JobSpec, from_section: int, seed: int, prompt: str | None) -> JobSpec:
    """``spec`` with one more re-roll (``sampling.rerolls.with_reroll``)."""
    rerolls = with_reroll(spec.request(Path("spec"), files=_stand_ins(spec)).rerolls, from_section, seed, prompt)
    return spec.with_changes({"rerolls": [asdict(r) for r in rerolls]})


def existing_reroll_dir(source: Path, spec: JobSpec) -> Path | None:
    """A re-roll folder beside ``source`` (``reroll_job_dir``'s names) that already holds ``spec``: the same
    re-roll asked for again, to resume rather than start over."""
    source = Path(source)
    base = re.sub(r"-r\d+$", "", source.name)
    for candidate in sorted(source.parent.glob(f"{glob.escape(base)}-r*")):
        if re.fullmatch(re.escape(base) + r"-r\d+", candidate.name) and (candidate / "job.json").is_file():
            try:
                if read_job_record(candidate)[0].digest == spec.digest:
                    return candidate
            except InvalidInputError:
                continue
    return None


def record_output(job_dir: Path, output: Path) -> None:
    """Set the video a prepared re-roll writes (its job.json's ``output``)."""
    job_file = Path(job_dir) / "job.json"
    record = json.loads(job_file.read_text(encoding="utf-8"))
    record["output"] = str(output)
    write_bytes_atomically(job_file, json.dumps(record, indent=2).encode(), private=True)


def reroll_job_dir(source: Path) -> Path:
    """A new job folder beside ``source`` for its re-roll: ``<name>-r<N>``, the first N from 2 that is free."""
    source = Path(source)
    base = re.sub(r"-r\d+$", "", source.name)
    version = 2
    while (candidate := source.with_name(f"{base}-r{version}")).exists():
        version += 1
    return candidate


def _kept_state(source: Path, spec: JobSpec, from_section: int,
                total: int) -> tuple[SectionCheckpoint, SectionState] | None:
    """The checkpoint to cut from and the state after ``from_section - 1`` sections (None from section 1)."""
    if from_section == 1:
        return None
    keep = from_section - 1
    checkpoint = JobDirectory(source).load(spec.digest)
    done = 0 if checkpoint is None else checkpoint.sections_done
    if checkpoint is None or done < keep:
        raise InvalidInputError("job_dir", f"{source} has {done} finished section(s) of {total}, and a re-roll from "
                                           f"section {from_section} keeps the {keep} before it",
                                f"Re-roll from section {done + 1} or earlier, or resume the job first.")
    state = load_section_state(source, keep)
    if state is None or state.spec_digest != spec.digest:
        raise InvalidInputError("job_dir", f"{source} has no saved state after section {keep} (the job ran "
                                           "before re-rolls were kept, or the state is damaged)",
                                "Re-roll from section 1, or run the job again.")
    missing = [name for name, _ in state.writer.segments if not (source / SECTIONS_DIR / name).is_file()]
    if missing:
        raise InvalidInputError("job_dir", f"{source} lacks the video segments {', '.join(missing)} of the kept "
                                           "sections", "Re-roll from section 1, or run the job again.")
    return checkpoint, state


def _write_folder(target: Path, spec: JobSpec, source: Path, kept: tuple[SectionCheckpoint, SectionState] | None,
                  from_section: int, total: int) -> None:
    if target.exists() and any(target.iterdir()):
        raise InvalidInputError("job_dir", f"{target} is not empty", "Give a new folder for the re-roll.")
    (target / "segments").mkdir(parents=True, exist_ok=True)
    record = {"spec": spec.to_dict(), "output": None}
    write_bytes_atomically(target / "job.json", json.dumps(record, indent=2).encode(), private=True)
    if kept is None:
        return
    checkpoint, state = kept
    for section in range(1, from_section):  # each kept section's state, now the new job's
        earlier = load_section_state(source, section)
        if earlier is not None:
            save_section_state(target, _with_digest(earlier, spec.digest), source / SECTIONS_DIR)
    for name, _ in state.writer.segments:
        _link(source / SECTIONS_DIR / name, target / "segments" / name)
    model = ModelVariant(spec.settings["model"])
    JobDirectory(target).save(SectionCheckpoint(
        spec_digest=spec.digest, sections_done=from_section - 1, total_sections=total,
        history_latents=history_before(model, checkpoint.history_latents, checkpoint.total_generated_latent_frames,
                                       state.total_generated_latent_frames),
        total_generated_latent_frames=state.total_generated_latent_frames,
        generator_state=state.generator_state, writer=state.writer))


def _with_digest(state: SectionState, digest: str) -> SectionState:
    return SectionState(digest, state.section, state.generator_state, state.total_generated_latent_frames,
                        state.writer)


def _stand_ins(spec: JobSpec) -> dict[str, Any]:
    """Stand-in paths for the spec's input files: only its settings are read here."""
    return {sha: Path(sha) for sha in spec.input_sha256s()}


def _link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy where links are not possible)."""
    if target.exists():
        if os.path.samefile(source, target):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
