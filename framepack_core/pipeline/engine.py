"""The engine: one validated request in, a stream of typed events and an mp4 out.

``_JobRun._run`` lists the stages in the official app's order (demo_gradio.py ``worker``), so the two can be
read side by side: check, plan, encode the text and the start image, then sample, decode and write section by
section (``sections``), and finish the video. Inputs are in ``inputs``, files in ``job_files``, failures are
described by ``failure``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from framepack_core.errors import EXPECTED_FAILURE_RECORD, Cancelled, InvalidInputError
from framepack_core.events import (
    CancelToken,
    EngineEvent,
    JobCancelled,
    JobFailed,
    JobFinished,
    Notice,
    Stage,
    StageChanged,
)
from framepack_core.jobs.checkpoint import JobDirectory, SectionCheckpoint
from framepack_core.jobs.fingerprint import environment_fingerprint
from framepack_core.jobs.output_description import OutputDescription
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.lora.adapters import LoraFile
from framepack_core.media.image_input import load_input_image
from framepack_core.media.video_io import probe_video
from framepack_core.memory.job_planning import JobPlanner, plan_summary
from framepack_core.memory.plan import MemoryPlan
from framepack_core.models.components import ModelVariant
from framepack_core.models.devices import DeviceConfig
from framepack_core.models.identity import model_identities
from framepack_core.models.loading import ModelSource
from framepack_core.models.runtime import RuntimeOptions
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.extension import ClipExtension
from framepack_core.pipeline.failure import describe_failure, is_expected_failure, is_out_of_memory
from framepack_core.pipeline.inputs import prepare_inputs
from framepack_core.pipeline.job_files import JobFiles, save_latents
from framepack_core.pipeline.progress import ProgressClock
from framepack_core.pipeline.reroll_resume import resumed_writer
from framepack_core.pipeline.sections import SectionLoop, SectionSampling
from framepack_core.pipeline.story_inputs import StoryImages, check_story_images
from framepack_core.pipeline.timings import DEFAULT_TIMINGS_PATH, StageTimings, job_shape
from framepack_core.request import GenerationRequest
from framepack_core.sampling.caches import MagCacheCalibration, step_cache_for_job
from framepack_core.sampling.packing import LatentHistory, plan_sections
from framepack_core.sampling.rerolls import check_rerolls
from framepack_core.sampling.sampler import (
    FlowMatchUniPC,
    GuidanceConfig,
    flux_shift_mu,
    main_token_count,
    shifted_sigmas,
)
from framepack_core.sampling.schedule import overlap_pixel_frames, total_latent_sections

logger = logging.getLogger(__name__)


def create_engine(source: ModelSource, config: DeviceConfig,
                  timings_path: Path | None = DEFAULT_TIMINGS_PATH, runtime: RuntimeOptions | None = None,
                  ram_share: float = 1.0) -> FramePackEngine:
    """The engine as the app and the CLI run it: models from ``source`` on ``config``'s device, run as ``runtime``
    says (attention backend, compilation), each job planning where they live
    (``framepack_core.memory.job_planning``) and its ETA learned from this machine's earlier jobs, kept in
    ``timings_path`` (``framepack_core.pipeline.timings``; None: in memory only). ``ram_share``: the part of the RAM its jobs may plan
    for, when several workers share the machine."""
    return FramePackEngine(ModelStore(source, config, runtime=runtime),
                           JobPlanner(source, config.device, ram_share=ram_share),
                           StageTimings() if timings_path is None else StageTimings.load(timings_path))


class FramePackEngine:
    """Runs generation jobs on one device with models loaded lazily from a ``ModelStore``.

    With a ``planner``, every job starts by planning where each component lives (``framepack_core.memory.plan``)
    and the store places the components so; without one, every component is loaded onto the device. Each job's
    ETA comes from the speeds ``timings`` learned, and adds to them (without: learned in memory, for this engine).
    """

    def __init__(self, models: ModelStore, planner: JobPlanner | None = None,
                 timings: StageTimings | None = None) -> None:
        self.models = models
        self.planner = planner
        self.timings = timings if timings is not None else StageTimings()

    def generate(
        self,
        request: GenerationRequest,
        cancel: CancelToken | None = None,
        job_id: str | None = None,
        snapshot_dir: Path | None = None,
        job_dir: Path | None = None,
        magcache_calibration: MagCacheCalibration | None = None,
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

        With ``magcache_calibration`` the job runs diffusers' MagCache in calibration mode (nothing skipped) and
        fills it with the measured ratios (``python -m framepack_core calibrate-cache``).
        """
        request = request.validated()
        check_rerolls(request)
        image = load_input_image(request.image)
        extension = ClipExtension.of(request)  # the clip is checked before anything loads
        story = check_story_images(request, image.pixels)  # end frame and keyframes, before any model loads
        loras = self.models.job_loras(request.loras, request.model)  # each LoRA file read and matched, no weights
        job_id = job_id or uuid.uuid4().hex[:12]
        cancel = cancel or CancelToken()
        files = JobFiles(job_id, request, JobDirectory(job_dir) if job_dir is not None else None, snapshot_dir)
        run = _JobRun(self.models, self.planner, request, image.pixels, job_id, cancel, files, self.timings,
                      extension, story, magcache_calibration, loras)
        for note in image.notes:
            yield Notice(job_id, message=f"Input image: {note}")
        for note in story.notes:
            yield Notice(job_id, message=note)
        for note in request.notes():  # an empty prompt: every edge (CLI, page, API) shows it
            yield Notice(job_id, message=note)
        for note in extension.notes() if extension is not None else ():
            yield Notice(job_id, message=note)
        yield from run.events()


class _JobRun:
    """One job: ``_run`` is its stages; ``events`` ends every run, also a failed or cancelled one, in exactly one
    terminal event."""

    def __init__(self, models: ModelStore, planner: JobPlanner | None, request: GenerationRequest,
                 pixels: np.ndarray, job_id: str, cancel: CancelToken, files: JobFiles, timings: StageTimings,
                 extension: ClipExtension | None = None, story: StoryImages | None = None,
                 magcache_calibration: MagCacheCalibration | None = None,
                 loras: Sequence[LoraFile] = ()) -> None:
        self.models = models
        self.planner = planner
        self.request = request
        self.pixels = pixels
        self.job_id = job_id
        self.cancel = cancel
        self.files = files
        self.started = time.perf_counter()
        self.timings = timings
        self.extension = extension
        self.story = story
        self.magcache_calibration = magcache_calibration
        self.loras = loras
        shape = job_shape(request, pixels.shape[:2], models)
        self.clock = ProgressClock(shape, timings.speeds(shape.key), self.started)

    def events(self) -> Iterator[EngineEvent]:
        try:
            for event in self._run():
                yield self.clock.observe(event)
        except InvalidInputError as error:  # a job folder that holds another job, or is in use
            yield JobFailed(self.job_id, message=error.message, hint=error.hint, error_type=type(error).__name__,
                            partial_path=None, sections_done=0)
        except Cancelled:
            partial = self.files.close_partial()
            yield JobCancelled(self.job_id, partial_path=partial, sections_done=self.files.sections_done)
        except Exception as error:  # noqa: BLE001 - every failure must end as an event, the app stays up
            message, hint = describe_failure(error, self.models.plan)
            if is_expected_failure(error):  # its event says the fix
                logger.error("Job %s failed: %s", self.job_id, message, extra={EXPECTED_FAILURE_RECORD: True})
            else:  # a bug: keep the traceback
                logger.exception("Job %s failed", self.job_id)
            partial = self.files.close_partial()
            if is_out_of_memory(error):
                self.models.empty_device_cache()  # the app stays up and the next job gets the memory back
            yield JobFailed(self.job_id, message=message, hint=hint, error_type=type(error).__name__,
                            partial_path=partial, sections_done=self.files.sections_done,
                            details=getattr(error, "details", ""))
        finally:
            self.models.end_loras()  # fused weights back exactly, adapters off: the next job starts clean
            self.files.close()
            # Also when the caller stops reading at the terminal event (the generator is closed there).
            self.timings.learn(self.clock.shape.key, self.clock.measured())

    def _run(self) -> Iterator[EngineEvent]:
        request, models, files = self.request, self.models, self.files
        window = request.latent_window_size

        # 1. Check the weights; every job has a spec, which its outputs carry (framepack_core.jobs.output_description)
        yield self._stage(Stage.LOADING_MODELS, "Checking model files ...")
        models.check_weights(request.model)
        spec = JobSpec.from_request(request, file_sha256(Path(request.image)),
                                    model_identities(models.source, request.model.value))

        # 2. Claim the job folder: a new job, one to resume, or one that is already finished
        checkpoint = yield from self._claim_job_dir(spec)
        if checkpoint is not None and checkpoint.finished_output is not None:
            yield from self._report_finished(Path(checkpoint.finished_output))
            return

        # 3. Plan the memory and place the models so
        plan = yield from self._plan_memory()
        self.cancel.raise_if_cancelled()

        # 4. Encode the prompts and the start image
        prepared = yield from prepare_inputs(models, request, self.pixels, self.job_id, self.cancel, self.story)
        if self.extension is not None:
            yield from self.extension.encode(models, self.job_id, prepared.height, prepared.width)

        # 5. Load the transformer; with its identity known, every mp4 from now on describes the job
        yield self._stage(Stage.LOADING_MODELS, "Loading the transformer ...")
        transformer = models.transformer(request.model, self.loras)
        applied = models.use_loras(self.loras, request.lora_fuse)  # the job's LoRAs on, at their weights
        # attention backend and compilation, then what the LoRAs say
        for note in (*models.acceleration_notes(request.model), *applied.notes):
            yield Notice(self.job_id, message=note)
        files.describe_as(OutputDescription(spec, environment_fingerprint(
            models, plan, request, identities=spec.models, transformer=transformer, loras=applied.records)))
        vae = models.vae()

        # 6. Sections, noise and sigmas; the latent shape comes from the models' configs
        sections = plan_sections(request.model, total_latent_sections(request.seconds, window), window)
        scale = vae.config.spatial_compression_ratio
        latent_height, latent_width = prepared.height // scale, prepared.width // scale
        sigmas = shifted_sigmas(request.steps, flux_shift_mu(main_token_count(window, latent_height, latent_width)))
        history = LatentHistory(request.model, prepared.start_latent)
        if self.extension is not None:
            self.extension.seed(history, window)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        if checkpoint is not None:
            history.restore(checkpoint.history_latents, checkpoint.total_generated_latent_frames)
            generator.set_state(checkpoint.generator_state)

        # 7. Open the video writer: new, or resumed from the checkpoint
        order = "prepend" if request.model == ModelVariant.ORIGINAL else "append"
        files.open_writer(order=order, overlap_frames=overlap_pixel_frames(window), crf=request.crf,
                          resume=resumed_writer(checkpoint, history, sections, window, order, models, vae))

        # 8. Section loop: sample, decode and write each section
        step_cache = step_cache_for_job(transformer, request, models.source.models_dir, models.source.cache_dir,
                                        spec.models, self.magcache_calibration)
        sampling = SectionSampling(
            transformer=transformer, inputs=prepared, sampler=FlowMatchUniPC(variant=request.sampler_variant),
            sigmas=sigmas.to(models.config.device), guidance=GuidanceConfig(scale=request.cfg, rescale=request.cfg_rescale),
            distilled_guidance=request.distilled_guidance, cache=step_cache,
            noise_shape=(1, transformer.config.in_channels, window, latent_height, latent_width),
            rerolls=request.rerolls)
        loop = SectionLoop(self.job_id, models, sampling, vae, files, self.cancel, self.clock, window, request.steps)
        if self.extension is not None:
            loop.first_section_skip = self.extension.first_section_skip(window)
        try:
            yield from loop.run(sections, files.sections_done, history, generator)
        finally:  # also on a failure or a cancel: the next job gets the bare transformer
            files.record_cache(step_cache.describe())
            step_cache.remove()

        # 9. Save the latents and write the video
        yield self._stage(Stage.WRITING, "Writing the video ...")
        latents_path = None
        if request.save_latents is not None:
            latents_path = save_latents(Path(request.save_latents), history.real_history_latents,
                                        prepared.start_latent, request)
        output, video_frames = files.finish(history, generator, len(sections))
        if self.extension is not None:
            video_frames += self.extension.finish(output)
        if files.sidecar_problem:
            yield Notice(self.job_id, message=files.sidecar_problem + "; the video's metadata still describes it.")
        yield JobFinished(self.job_id, output_path=output, latents_path=latents_path,
                          video_frames=video_frames, width=prepared.width, height=prepared.height,
                          elapsed_s=time.perf_counter() - self.started,
                          transformer_calls=step_cache.stats.transformer_calls, skipped_calls=step_cache.stats.skipped)

    def _stage(self, stage: Stage, message: str) -> StageChanged:
        return StageChanged(self.job_id, stage=stage, message=message)

    def _claim_job_dir(self, spec: JobSpec) -> Generator[EngineEvent, None, SectionCheckpoint | None]:
        """Claim the job folder, if any; returns its checkpoint (None for a new job, or without a folder)."""
        checkpoint = self.files.claim(spec)
        if checkpoint is not None and checkpoint.finished_output is None:
            assert self.files.job_dir is not None
            done, total = checkpoint.sections_done, checkpoint.total_sections
            yield Notice(self.job_id, message=f"Resuming from section {done + 1} of {total}: {done} finished "
                                              f"section(s) kept in {self.files.job_dir.path}")
        return checkpoint

    def _report_finished(self, finished: Path) -> Iterator[EngineEvent]:
        """The job folder's job already finished: report its video instead of making it again."""
        if not finished.is_file():
            raise InvalidInputError("job_dir", f"this job finished, but its video {finished} is gone",
                                    "Delete the job folder to make the video again.")
        info = probe_video(finished)
        yield Notice(self.job_id, message=f"This job already finished: {finished}")
        yield JobFinished(self.job_id, output_path=finished, latents_path=None, video_frames=info.frame_count,
                          width=info.width, height=info.height, elapsed_s=time.perf_counter() - self.started)

    def _plan_memory(self) -> Generator[EngineEvent, None, MemoryPlan | None]:
        """Plan this job's memory and place the models so (the store re-places only what changed)."""
        if self.planner is None:
            return None
        height, width = self.pixels.shape[:2]
        plan = self.planner.plan_job(self.request, (height, width), self.models, self.loras)
        self.models.use_plan(plan)
        yield Notice(self.job_id, message=plan_summary(plan))
        if not plan.fits:
            yield Notice(self.job_id, message="This job may run out of memory: " + " ".join(plan.notes))
        return plan
