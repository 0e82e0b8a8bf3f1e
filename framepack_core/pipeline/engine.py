"""The section loop: one validated request in, a stream of typed events and an mp4 out.

Stages follow the official app (demo_gradio.py ``worker``) so the two can be read side by side:
text encoding, image bucket and crop, VAE encoding of the start frame, SigLIP, then per section: pack the
context, sample, add to the history, decode the new latents with one window of context, blend and write.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from framepack_core.errors import Cancelled, FramePackError, InvalidInputError, OutputWriteError
from framepack_core.events import (
    CancelToken,
    EngineEvent,
    InputPrepared,
    JobCancelled,
    JobFailed,
    JobFinished,
    Notice,
    SectionFinished,
    Stage,
    StageChanged,
    StepProgress,
)
from framepack_core.files import atomic_path
from framepack_core.jobs.checkpoint import JobDirectory, SectionCheckpoint
from framepack_core.jobs.fingerprint import environment_fingerprint
from framepack_core.jobs.output_description import OutputDescription, container_metadata, write_sidecar
from framepack_core.jobs.output_naming import DEFAULT_OUTPUT_DIR, output_path, partial_output_path
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.media.buckets import find_nearest_bucket, resize_and_center_crop
from framepack_core.media.image_input import load_input_image
from framepack_core.media.preview import latent_preview
from framepack_core.media.video_io import SectionVideoWriter, probe_video
from framepack_core.memory.job_planning import JobPlanner, plan_summary
from framepack_core.memory.plan import MemoryPlan
from framepack_core.memory.report import next_plan_advice
from framepack_core.models.components import Component, ModelVariant
from framepack_core.models.devices import DeviceConfig
from framepack_core.models.identity import model_identities
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.models.text_encoding import PromptEmbeddings
from framepack_core.request import GenerationRequest
from framepack_core.sampling.denoiser import PackedDenoiser, SectionConditioning
from framepack_core.sampling.packing import LatentHistory, plan_sections
from framepack_core.sampling.sampler import (
    FlowMatchUniPC,
    GuidanceConfig,
    flux_shift_mu,
    main_token_count,
    shifted_sigmas,
)
from framepack_core.sampling.schedule import overlap_pixel_frames, total_latent_sections, video_length
from framepack_core.sampling.teacache import TeaCacheConfig, apply_teacache

logger = logging.getLogger(__name__)

LATENT_CHANNELS = 16
VAE_SPATIAL_COMPRESSION = 8


@dataclass(frozen=True)
class PreparedInputs:
    """Everything the section loop needs that does not change between sections."""

    positive: PromptEmbeddings
    negative: PromptEmbeddings | None
    image_embeddings: torch.Tensor
    start_latent: torch.Tensor
    height: int
    width: int


def create_engine(source: ModelSource, config: DeviceConfig) -> FramePackEngine:
    """The engine as the app and the CLI run it: models from ``source`` on ``config``'s device, each job planning
    where they live (``framepack_core.memory.job_planning``)."""
    return FramePackEngine(ModelStore(source, config), JobPlanner(source, config.device))


class FramePackEngine:
    """Runs generation jobs on one device with models loaded lazily from a ``ModelStore``.

    With a ``planner``, every job starts by planning where each component lives (``framepack_core.memory.plan``)
    and the store places the components so; without one, every component is loaded onto the device.
    """

    def __init__(self, models: ModelStore, planner: JobPlanner | None = None) -> None:
        self.models = models
        self.planner = planner

    def generate(
        self,
        request: GenerationRequest,
        cancel: CancelToken | None = None,
        job_id: str | None = None,
        snapshot_dir: Path | None = None,
        job_dir: Path | None = None,
    ) -> Iterator[EngineEvent]:
        """Yield events until exactly one terminal event (finished, cancelled or failed).

        Bad input raises ``InvalidInputError`` before anything is yielded or loaded, so callers can refuse a
        request synchronously; everything after that is reported as events. With ``snapshot_dir``, a playable
        mp4 of the video so far is written there after every section (for a UI; it costs a remux of the
        segments, no re-encoding).

        With ``job_dir`` the job checkpoints after every section into that folder (``framepack_core.jobs.checkpoint``);
        run again with the same folder and the same spec, it resumes from the last finished section and the
        result is bit-identical to an uninterrupted run. A folder holding another job is refused.

        Every mp4 it writes (final or partial) describes itself: the job spec and the environment fingerprint in
        its metadata and in a sidecar JSON next to it (``framepack_core.jobs.output_description``).
        """
        request = request.validated()
        image = load_input_image(request.image)
        job_id = job_id or uuid.uuid4().hex[:12]
        cancel = cancel or CancelToken()
        output = Path(request.output) if request.output else None
        run = _JobRun(self.models, request, image.pixels, job_id, cancel, output, snapshot_dir, self.planner,
                      JobDirectory(job_dir) if job_dir is not None else None)
        for note in image.notes:
            yield Notice(job_id, message=f"Input image: {note}")
        yield from run.events()


class _JobRun:
    def __init__(self, models, request, pixels, job_id, cancel, output, snapshot_dir=None,  # noqa: ANN001
                 planner=None, job_dir=None) -> None:  # noqa: ANN001
        self.snapshot_dir = snapshot_dir
        self.planner = planner
        self.job_dir: JobDirectory | None = job_dir
        self.spec: JobSpec | None = None
        self.description: OutputDescription | None = None  # spec + fingerprint, once the transformer is loaded
        self.checkpoint: SectionCheckpoint | None = None
        self.plan: MemoryPlan | None = None
        self.models = models
        self.request = request
        self.pixels = pixels
        self.job_id = job_id
        self.cancel = cancel
        self.output: Path = output or output_path(DEFAULT_OUTPUT_DIR, seed=request.seed, model=request.model.value)
        self._output_given = output is not None
        self.writer: SectionVideoWriter | None = None
        self.sections_done = 0
        self.sidecar_problem: str | None = None
        self.started = time.perf_counter()

    def _stage(self, stage: Stage, message: str, section: int | None = None) -> StageChanged:
        return StageChanged(self.job_id, stage=stage, message=message, section=section)

    def _check_cancel(self) -> None:
        if self.cancel.cancelled:
            raise Cancelled()

    def events(self) -> Iterator[EngineEvent]:
        try:
            yield from self._run()
        except InvalidInputError as error:  # a job folder that holds another job, or is in use
            yield JobFailed(self.job_id, message=error.message, hint=error.hint, error_type=type(error).__name__,
                            partial_path=None, sections_done=0)
        except Cancelled:
            partial = self._close_partial()
            yield JobCancelled(self.job_id, partial_path=partial, sections_done=self.sections_done)
        except Exception as error:  # noqa: BLE001 - every failure must end as an event, the app stays up
            if isinstance(error, FramePackError) or _is_out_of_memory(error):  # expected: its event says the fix
                logger.error("Job %s failed: %s", self.job_id, getattr(error, "message", error))
            else:  # a bug: keep the traceback
                logger.exception("Job %s failed", self.job_id)
            partial = self._close_partial()
            message, hint = _describe_failure(error, self.plan)
            if _is_out_of_memory(error):
                self.models.empty_device_cache()  # the app stays up and the next job gets the memory back
            yield JobFailed(self.job_id, message=message, hint=hint, error_type=type(error).__name__,
                            partial_path=partial, sections_done=self.sections_done)
        finally:
            if self.job_dir is not None:
                self.job_dir.close()

    def _close_partial(self) -> Path | None:
        if self.job_dir is not None and self.writer is not None and self.sections_done:
            # The writer must stay resumable: a snapshot instead of finalize, and the segments stay.
            try:
                return self._describe(self.writer.write_snapshot(partial_output_path(self.output),
                                                                 metadata=self._metadata()))
            except Exception:  # noqa: BLE001 - the original error matters more than the partial video
                logger.exception("Could not write the partial video of job %s", self.job_id)
                return None
        if self.writer is None or self.sections_done == 0:
            if self.writer is not None:
                self.writer.discard()
            return None
        try:
            self.writer.output_path = partial_output_path(self.output)
            return self._describe(self.writer.finalize(metadata=self._metadata()))
        except Exception:  # noqa: BLE001 - the original error matters more than the partial video
            logger.exception("Could not write the partial video of job %s", self.job_id)
            self.writer.discard()  # e.g. a full disk: leave no hidden segment folder behind
            return None

    def _metadata(self) -> dict[str, str]:
        """The mp4 tags that describe this job (none before the description exists)."""
        return container_metadata(self.description) if self.description is not None else {}

    def _describe(self, video: Path) -> Path:
        """Write ``video``'s sidecar JSON (the same description as its metadata). A failure is logged, not raised:
        the video is written and carries the description itself."""
        if self.description is not None:
            try:
                write_sidecar(video, self.description)
            except OSError as error:
                self.sidecar_problem = f"Could not write the settings file next to {video}: {error}"
                logger.warning("%s (the video's metadata still describes it)", self.sidecar_problem)
        return video

    # 1. Inputs ------------------------------------------------------------------------------------------------

    def _start(self) -> Iterator[EngineEvent]:
        """Check the files, claim the job folder (which may say the job is already done) and plan the memory."""
        yield self._stage(Stage.LOADING_MODELS, "Checking model files ...")
        self.models.check_weights(self.request.model)
        request = self.request  # every job has a spec: its outputs carry it (see framepack_core.jobs.output_description)
        self.spec = JobSpec.from_request(request, file_sha256(Path(request.image)),
                                         model_identities(self.models.source, request.model))
        if self.job_dir is not None:
            yield from self._open_job_dir()
            if self.checkpoint is not None and self.checkpoint.finished_output is not None:
                finished = Path(self.checkpoint.finished_output)
                if not finished.is_file():
                    raise InvalidInputError("job_dir", f"this job finished, but its video {finished} is gone",
                                            "Delete the job folder to make the video again.")
                info = probe_video(finished)
                yield Notice(self.job_id, message=f"This job already finished: {finished}")
                yield JobFinished(self.job_id, output_path=finished, latents_path=None,
                                  video_frames=info.frame_count, width=info.width, height=info.height,
                                  elapsed_s=time.perf_counter() - self.started)
                return
        yield from self._plan_memory()
        self._check_cancel()

    def _prepare(self) -> Iterator[EngineEvent | PreparedInputs]:
        request, models = self.request, self.models

        yield self._stage(Stage.TEXT_ENCODING, "Text encoding ...")
        positive = models.encode_prompt(request.prompt)
        negative = models.encode_prompt(request.negative_prompt) if request.cfg != 1.0 else None
        models.finish_text_encoding()
        for name, embeddings in (("prompt", positive), ("negative prompt", negative)):
            if embeddings is not None and embeddings.truncated:
                yield Notice(self.job_id, message=f"The {name} is longer than 256 tokens; only the first 256 are used.")
        self._check_cancel()

        yield self._stage(Stage.IMAGE_PROCESSING, "Image processing ...")
        source_height, source_width = self.pixels.shape[:2]
        height, width = find_nearest_bucket(source_height, source_width, resolution=request.resolution)
        cropped = resize_and_center_crop(self.pixels, target_height=height, target_width=width)
        length = video_length(request.seconds, request.latent_window_size)
        yield InputPrepared(self.job_id, image=cropped, width=width, height=height,
                            total_sections=length.sections, video_frames=length.pixel_frames)

        yield self._stage(Stage.VAE_ENCODING, "VAE encoding ...")
        vae = models.vae()
        image_tensor = torch.from_numpy(cropped).float() / 127.5 - 1
        image_tensor = image_tensor.permute(2, 0, 1)[None, :, None]
        with torch.no_grad(), models.stage(Component.VAE):
            posterior = vae.encode(image_tensor.to(device=vae.device, dtype=vae.dtype)).latent_dist
            # The posterior mean, not a sample: the official app samples with the global RNG, which makes its
            # runs unrepeatable; the mean is what that sample scatters around.
            start_latent = (posterior.mode() * vae.config.scaling_factor).float().cpu()
        self._check_cancel()

        yield self._stage(Stage.IMAGE_ENCODING, "CLIP Vision encoding ...")
        feature_extractor, image_encoder = models.image_encoder()
        with torch.no_grad(), models.stage(Component.IMAGE_ENCODER):
            inputs = feature_extractor.preprocess(images=cropped, return_tensors="pt")
            inputs = inputs.to(device=image_encoder.device, dtype=image_encoder.dtype)
            image_embeddings = image_encoder(**inputs).last_hidden_state
        self._check_cancel()
        yield PreparedInputs(positive, negative, image_embeddings, start_latent, height, width)

    def _open_job_dir(self) -> Iterator[EngineEvent]:
        """Claim the job folder: a new job records its spec; the same spec resumes; another one is refused."""
        assert self.job_dir is not None and self.spec is not None
        # Without --output a rerun writes where the first run would have (its default name has a time stamp).
        self.output, self.checkpoint = self.job_dir.open(self.spec, self.output if self._output_given else None,
                                                         default_output=self.output)
        if self.checkpoint is not None and self.checkpoint.finished_output is None:
            done, total = self.checkpoint.sections_done, self.checkpoint.total_sections
            yield Notice(self.job_id, message=f"Resuming from section {done + 1} of {total}: {done} finished "
                                              f"section(s) kept in {self.job_dir.path}")

    def _plan_memory(self) -> Iterator[EngineEvent]:
        """Plan this job's memory and place the models so (the store re-places only what changed)."""
        if self.planner is None:
            return
        height, width = self.pixels.shape[:2]
        held_device, held_host = self.models.held_bytes()
        self.plan = self.planner.plan(self.request, (height, width), held_device_bytes=held_device,
                                      held_host_bytes=held_host)
        self.models.use_plan(self.plan)
        yield Notice(self.job_id, message=plan_summary(self.plan))
        if not self.plan.fits:
            yield Notice(self.job_id, message="This job may run out of memory: " + " ".join(self.plan.notes))

    # 2. Sections ----------------------------------------------------------------------------------------------

    def _run(self) -> Iterator[EngineEvent]:
        request = self.request
        for event in self._start():
            yield event
            if isinstance(event, JobFinished):
                return
        prepared: PreparedInputs | None = None
        for item in self._prepare():
            if isinstance(item, PreparedInputs):
                prepared = item
            else:
                yield item
        assert prepared is not None

        yield self._stage(Stage.LOADING_MODELS, "Loading the transformer ...")
        transformer = self.models.transformer(request.model)
        dtype, device = self.models.config.transformer_dtype, self.models.config.device
        assert self.spec is not None
        self.description = OutputDescription(self.spec, environment_fingerprint(
            self.models, self.plan, request, identities=self.spec.models, transformer=transformer))
        vae = self.models.vae()

        window = request.latent_window_size
        num_sections = total_latent_sections(request.seconds, window)
        plans = plan_sections(request.model, num_sections, window)
        history = LatentHistory(request.model, prepared.start_latent)
        latent_height, latent_width = prepared.height // VAE_SPATIAL_COMPRESSION, prepared.width // VAE_SPATIAL_COMPRESSION
        generator = torch.Generator("cpu").manual_seed(request.seed)
        sampler = FlowMatchUniPC(variant=request.sampler_variant)
        sigmas = shifted_sigmas(request.steps, flux_shift_mu(main_token_count(window, latent_height, latent_width)))
        guidance = GuidanceConfig(scale=request.cfg, rescale=request.cfg_rescale)
        order = "prepend" if request.model == ModelVariant.ORIGINAL else "append"
        self.output.parent.mkdir(parents=True, exist_ok=True)
        writer_options = dict(order=order, overlap_frames=overlap_pixel_frames(window), crf=request.crf)
        start = 0
        if self.checkpoint is not None:
            checkpoint = self.checkpoint
            history.restore(checkpoint.history_latents, checkpoint.total_generated_latent_frames)
            generator.set_state(checkpoint.generator_state)
            self.writer = SectionVideoWriter.resume(checkpoint.writer, self.output,
                                                    work_dir=self.job_dir.segments_dir, **writer_options)
            start = self.sections_done = checkpoint.sections_done
        elif self.job_dir is not None:
            self.writer = SectionVideoWriter(self.output, work_dir=self.job_dir.segments_dir, **writer_options)
        else:
            self.writer = SectionVideoWriter(self.output, **writer_options)
        teacache = apply_teacache(transformer, TeaCacheConfig(request.teacache_threshold, request.steps)) \
            if request.use_teacache else None
        total_steps = num_sections * request.steps
        sampling_started: float | None = None  # after the first step, so model warm-up does not skew the ETA
        try:
            for plan in plans[start:]:
                self._check_cancel()
                section = plan.number + 1
                yield self._stage(Stage.SAMPLING, f"Sampling section {section}/{num_sections} ...", section)
                if teacache is not None:
                    teacache.reset()
                conditioning = SectionConditioning(prepared.positive, prepared.negative, prepared.image_embeddings,
                                                   history.context(), plan)
                denoiser = PackedDenoiser(transformer, conditioning, request.distilled_guidance, guidance, dtype,
                                          device, teacache)
                # Drawn from the job's one CPU generator in section order, as the official app does, so the
                # noise is the same on every device.
                noise = torch.randn((1, LATENT_CHANNELS, window, latent_height, latent_width), generator=generator,
                                    device=generator.device).to(device=device, dtype=torch.float32)
                dit_started = time.perf_counter()
                generated = noise
                with self.models.stage(Component.TRANSFORMER):
                    for step in sampler.steps(denoiser, noise, sigmas.to(device)):
                        generated = step.denoised
                        sampling_started = sampling_started or time.perf_counter()
                        done = plan.number * request.steps + step.index + 1
                        yield self._progress(section, num_sections, step.index + 1, done, total_steps,
                                             sampling_started, step.denoised)
                        self._check_cancel()
                dit_s = time.perf_counter() - dit_started

                history.add_section(generated, plan.is_last)
                yield self._stage(Stage.DECODING, f"Decoding section {section}/{num_sections} ...", section)
                decode_started = time.perf_counter()
                latents = history.latents_to_decode(plan.number, plan.is_last, window)
                with torch.no_grad(), self.models.stage(Component.VAE):
                    pixels = vae.decode((latents / vae.config.scaling_factor).to(device=vae.device, dtype=vae.dtype))
                    pixels = pixels.sample.float().cpu()
                decode_s = time.perf_counter() - decode_started
                write_started = time.perf_counter()
                written = self.writer.add_section(pixels)
                self.sections_done += 1
                if self.job_dir is not None:
                    self._save_checkpoint(history, generator, num_sections)
                write_s = time.perf_counter() - write_started
                snapshot = None
                if self.snapshot_dir is not None:
                    self.snapshot_dir.mkdir(parents=True, exist_ok=True)
                    # A new name per section, so a browser never shows a cached older snapshot.
                    snapshot = self.snapshot_dir / f"{self.job_id}_{section:03d}.mp4"
                    if self.job_dir is not None:  # the checkpoint just wrote this very video: no second remux
                        _link_or_copy(self.job_dir.partial_path, snapshot)
                    else:
                        self.writer.write_snapshot(snapshot)
                yield SectionFinished(self.job_id, section=section, total_sections=num_sections,
                                      segment_path=written.segment_path, video_frames=written.total_frames,
                                      latent_frames=history.total_generated_latent_frames,
                                      dit_s=dit_s, decode_s=decode_s, write_s=write_s, snapshot_path=snapshot)
        finally:
            if teacache is not None:
                teacache.remove()

        yield self._stage(Stage.WRITING, "Writing the video ...")
        latents_path = None
        if request.save_latents is not None:
            latents_path = save_latents(Path(request.save_latents), history.real_history_latents,
                                        prepared.start_latent, request)
        video_frames = self.writer.total_frames
        if self.job_dir is not None:
            # Recorded before the segments go: a rerun then reports the finished video instead of redoing it.
            self._save_checkpoint(history, generator, num_sections, finished_output=self.output)
        output = self._describe(self.writer.finalize(metadata=self._metadata()))
        if self.sidecar_problem:
            yield Notice(self.job_id, message=self.sidecar_problem + "; the video's metadata still describes it.")
        if self.job_dir is not None:
            self.job_dir.partial_path.unlink(missing_ok=True)
        yield JobFinished(self.job_id, output_path=output, latents_path=latents_path,
                          video_frames=video_frames, width=prepared.width, height=prepared.height,
                          elapsed_s=time.perf_counter() - self.started)

    def _save_checkpoint(self, history: LatentHistory, generator: torch.Generator, total_sections: int,
                         finished_output: Path | None = None) -> None:
        assert self.job_dir is not None and self.spec is not None and self.writer is not None
        self.job_dir.save(SectionCheckpoint(
            spec_digest=self.spec.digest, sections_done=self.sections_done, total_sections=total_sections,
            history_latents=history.history_latents, total_generated_latent_frames=history.total_generated_latent_frames,
            generator_state=generator.get_state(), writer=self.writer.state(),
            finished_output=None if finished_output is None else str(finished_output)))
        if finished_output is None:
            self.writer.write_snapshot(self.job_dir.partial_path)

    def _progress(self, section, num_sections, step, done, total, sampling_started, denoised) -> StepProgress:  # noqa: ANN001
        elapsed = time.perf_counter() - self.started
        eta = None
        if done >= 2:
            per_step = (time.perf_counter() - sampling_started) / (done - 1)
            eta = per_step * (total - done)
        return StepProgress(self.job_id, section=section, total_sections=num_sections, step=step,
                            total_steps=self.request.steps, elapsed_s=elapsed, eta_s=eta,
                            preview=latent_preview(denoised))


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
                               "Free some disk space or choose another --save-latents path.") from error
    return path


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (it keeps this version when ``source`` is later replaced by a
    rename), or a copy where the file system has no hard links."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _is_out_of_memory(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _describe_failure(error: Exception, plan: MemoryPlan | None = None) -> tuple[str, str]:
    if isinstance(error, FramePackError):
        return error.message, error.hint
    if _is_out_of_memory(error):
        if plan is not None:
            return ("The device ran out of memory (the plan estimated a peak of "
                    f"{plan.peak_vram_gb:.1f} GiB of VRAM and {plan.peak_ram_gb:.1f} GiB of RAM).",
                    next_plan_advice(plan))
        return ("The device ran out of memory.",
                "Lower --resolution or the video length, turn on TeaCache, or close other GPU programs.")
    return f"{type(error).__name__}: {error}", "This is a bug; please report it with the log above."
