"""The section loop, as in the official app: per section, pack the context, sample, add to the latent history,
decode the new latents with one window of context, blend them into the video and write it."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import torch

from framepack_core.events import (
    CancelToken,
    EngineEvent,
    SectionFinished,
    Stage,
    StageChanged,
    StepProgress,
)
from framepack_core.media.preview import latent_preview
from framepack_core.models.components import Component
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.inputs import PreparedInputs
from framepack_core.pipeline.job_files import JobFiles
from framepack_core.pipeline.progress import ProgressClock
from framepack_core.pipeline.story_inputs import anchored_context
from framepack_core.request import Reroll
from framepack_core.sampling.caches import StepCache
from framepack_core.sampling.denoiser import PackedDenoiser, SectionConditioning
from framepack_core.sampling.packing import LatentHistory, SectionPlan
from framepack_core.sampling.rerolls import reseed_for_section
from framepack_core.sampling.sampler import FlowMatchUniPC, GuidanceConfig


@dataclass(frozen=True)
class SectionSampling:
    """What every section of a job is sampled with; fixed for the job."""

    transformer: torch.nn.Module
    inputs: PreparedInputs
    sampler: FlowMatchUniPC
    sigmas: torch.Tensor  # on the sampling device
    guidance: GuidanceConfig
    distilled_guidance: float
    noise_shape: tuple[int, int, int, int, int]  # (1, latent channels, window, latent height, latent width)
    cache: StepCache | None = None  # the job's step cache (sampling.caches); None: the full model
    rerolls: tuple[Reroll, ...] = ()  # re-seed the generator and change the prompt from a section on


@dataclass
class SectionLoop:
    """Samples, decodes and writes a job's sections in generation order."""

    job_id: str
    models: ModelStore
    sampling: SectionSampling
    vae: torch.nn.Module
    files: JobFiles
    cancel: CancelToken
    clock: ProgressClock
    window: int  # latent frames per section
    steps: int  # sampling steps per section
    first_section_skip: int = 0  # leading pixel frames of section 0 that are context, not video (extend_video)

    def run(self, sections: list[SectionPlan], start: int, history: LatentHistory,
            generator: torch.Generator) -> Iterator[EngineEvent]:
        """Run ``sections[start:]`` (the earlier ones are in ``history`` already)."""
        total = len(sections)
        for plan in sections[start:]:
            self.cancel.raise_if_cancelled()
            section = plan.number + 1
            yield StageChanged(self.job_id, stage=Stage.SAMPLING, message=f"Sampling section {section}/{total} ...",
                               section=section)
            dit_started = time.perf_counter()
            reseed_for_section(generator, self.sampling.rerolls, section)
            generated = yield from self._sample(plan, history, generator, total)
            dit_s = time.perf_counter() - dit_started

            history.add_section(generated, plan.is_last)
            yield StageChanged(self.job_id, stage=Stage.DECODING, message=f"Decoding section {section}/{total} ...",
                               section=section)
            decode_started = time.perf_counter()
            pixels = self._decode(history.latents_to_decode(plan.number, plan.is_last, self.window))
            if plan.number == 0:
                pixels = pixels[:, :, self.first_section_skip:]
            decode_s = time.perf_counter() - decode_started

            write_started = time.perf_counter()
            written = self.files.add_section(pixels, history, generator, total)
            write_s = time.perf_counter() - write_started
            snapshot = self.files.snapshot(section)
            yield SectionFinished(self.job_id, section=section, total_sections=total,
                                  segment_path=written.segment_path, video_frames=written.total_frames,
                                  latent_frames=history.total_generated_latent_frames, dit_s=dit_s,
                                  decode_s=decode_s, write_s=write_s, snapshot_path=snapshot)

    def _sample(self, plan: SectionPlan, history: LatentHistory, generator: torch.Generator,
                total: int) -> Generator[StepProgress, None, torch.Tensor]:
        """Denoise one section from fresh noise, yielding after every step; returns its latents."""
        sampling, inputs = self.sampling, self.sampling.inputs
        dtype, device = self.models.config.transformer_dtype, self.models.config.device
        if sampling.cache is not None:
            sampling.cache.section_started()
        conditioning = SectionConditioning(inputs.positive.for_section(plan.number + 1), inputs.negative,
                                           inputs.image_embeddings,
                                           anchored_context(history.context(), plan.number, inputs.anchors), plan)
        denoiser = PackedDenoiser(sampling.transformer, conditioning, sampling.distilled_guidance, sampling.guidance,
                                  dtype, device, sampling.cache)
        # Drawn from the job's one CPU generator in section order, as the official app does, so the noise is the
        # same on every device.
        noise = torch.randn(sampling.noise_shape, generator=generator, device=generator.device)
        noise = noise.to(device=device, dtype=torch.float32)
        generated = noise
        with self.models.stage(Component.TRANSFORMER):
            for step in sampling.sampler.steps(denoiser, noise, sampling.sigmas):
                generated = step.denoised
                elapsed, eta = self.clock.tick(plan.number + 1, step.index + 1)
                yield StepProgress(self.job_id, section=plan.number + 1, total_sections=total, step=step.index + 1,
                                   total_steps=self.steps, elapsed_s=elapsed, eta_s=eta,
                                   preview=latent_preview(step.denoised))
                self.cancel.raise_if_cancelled()
        return generated

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        with torch.no_grad(), self.models.stage(Component.VAE):
            pixels = vae.decode((latents / vae.config.scaling_factor).to(device=vae.device, dtype=vae.dtype))
            return pixels.sample.float().cpu()
