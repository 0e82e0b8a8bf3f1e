"""Frame-context packing: which history latents the model sees for a section, and at which frame indices.

Pure tensor bookkeeping, shared by both models:

* ``original`` (FramePackI2V_HY, "inverted anti-drifting"): generates the END of the clip first. Every section
  sees the user's image at t=0, a gap of ``padding * window`` blank indices, its own window, then 1 / 2 / 16
  already generated *later* frames at 1x / 2x / 4x compression. New latents are prepended to the history.
* ``f1`` (FramePack-F1, forward): the start frame stays at t=0 as an anchor, then the 16 / 2 / 1 most recent
  frames at 4x / 2x / 1x, then the window. New latents are appended.

The names follow the official app (`history_latents`, `clean_latents_2x`, ...) so the two read side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framepack_core.models.components import ModelVariant
from framepack_core.sampling.schedule import original_latent_paddings

CONTEXT_1X, CONTEXT_2X, CONTEXT_4X = 1, 2, 16
HISTORY_CONTEXT_FRAMES = CONTEXT_1X + CONTEXT_2X + CONTEXT_4X


@dataclass(frozen=True)
class SectionPlan:
    """One section's position in the packed sequence; all indices are 1-D int64 tensors."""

    number: int  # 0-based, in generation order
    is_last: bool
    latent_padding: int | None  # original model only, in windows
    latent_indices: torch.Tensor
    clean_latent_indices: torch.Tensor
    clean_latent_2x_indices: torch.Tensor
    clean_latent_4x_indices: torch.Tensor


def plan_sections(variant: ModelVariant, num_sections: int, latent_window_size: int) -> list[SectionPlan]:
    if variant == ModelVariant.ORIGINAL:
        paddings = original_latent_paddings(num_sections)
        return [_original_plan(i, p, latent_window_size) for i, p in enumerate(paddings)]
    return [_f1_plan(i, i == num_sections - 1, latent_window_size) for i in range(num_sections)]


def _original_plan(number: int, padding: int, window: int) -> SectionPlan:
    blank = padding * window
    sizes = [1, blank, window, CONTEXT_1X, CONTEXT_2X, CONTEXT_4X]
    pre, _blank, latent, post, two_x, four_x = torch.arange(sum(sizes)).split(sizes)
    return SectionPlan(
        number=number,
        is_last=padding == 0,
        latent_padding=padding,
        latent_indices=latent,
        clean_latent_indices=torch.cat([pre, post]),
        clean_latent_2x_indices=two_x,
        clean_latent_4x_indices=four_x,
    )


def _f1_plan(number: int, is_last: bool, window: int) -> SectionPlan:
    sizes = [1, CONTEXT_4X, CONTEXT_2X, CONTEXT_1X, window]
    start, four_x, two_x, one_x, latent = torch.arange(sum(sizes)).split(sizes)
    return SectionPlan(
        number=number,
        is_last=is_last,
        latent_padding=None,
        latent_indices=latent,
        clean_latent_indices=torch.cat([start, one_x]),
        clean_latent_2x_indices=two_x,
        clean_latent_4x_indices=four_x,
    )


@dataclass(frozen=True)
class PackedContext:
    clean_latents: torch.Tensor
    clean_latents_2x: torch.Tensor
    clean_latents_4x: torch.Tensor


class LatentHistory:
    """The generated latents so far plus the zero context the first sections see.

    ``history_latents`` has the same layout as in the official app: for ``original`` the newest section is at
    the front followed by a zero tail of 19 frames; for ``f1`` a zero head of 19 frames is followed by the start
    latent and the sections in time order.
    """

    def __init__(self, variant: ModelVariant, start_latent: torch.Tensor) -> None:
        self.variant = variant
        self.start_latent = start_latent.to(torch.float32).cpu()
        batch, channels, _, height, width = self.start_latent.shape
        zeros = torch.zeros(batch, channels, HISTORY_CONTEXT_FRAMES, height, width, dtype=torch.float32)
        if variant == ModelVariant.ORIGINAL:
            self.history_latents = zeros
            self.total_generated_latent_frames = 0
        else:
            self.history_latents = torch.cat([zeros, self.start_latent], dim=2)
            self.total_generated_latent_frames = 1

    def restore(self, history_latents: torch.Tensor, total_generated_latent_frames: int) -> None:
        """Continue from a checkpoint's ``history_latents`` and frame count (see ``framepack_core.jobs.checkpoint``)."""
        expected = self.history_latents.shape[:2] + self.history_latents.shape[3:]
        if history_latents.shape[:2] + history_latents.shape[3:] != expected:
            raise ValueError(f"checkpoint latents of shape {tuple(history_latents.shape)} do not fit this job")
        self.history_latents = history_latents.to(torch.float32).cpu()
        self.total_generated_latent_frames = int(total_generated_latent_frames)

    def context(self) -> PackedContext:
        if self.variant == ModelVariant.ORIGINAL:
            post, two_x, four_x = self.history_latents[:, :, :HISTORY_CONTEXT_FRAMES].split(
                [CONTEXT_1X, CONTEXT_2X, CONTEXT_4X], dim=2
            )
            clean = torch.cat([self.start_latent, post], dim=2)
        else:
            four_x, two_x, one_x = self.history_latents[:, :, -HISTORY_CONTEXT_FRAMES:].split(
                [CONTEXT_4X, CONTEXT_2X, CONTEXT_1X], dim=2
            )
            clean = torch.cat([self.start_latent, one_x], dim=2)
        return PackedContext(clean_latents=clean, clean_latents_2x=two_x, clean_latents_4x=four_x)

    def add_section(self, generated_latents: torch.Tensor, is_last: bool) -> torch.Tensor:
        """Store a sampled section; returns the latents that became part of the video (10 for the last original)."""
        generated = generated_latents.to(torch.float32).cpu()
        if self.variant == ModelVariant.ORIGINAL:
            if is_last:
                # The last original section ends at the user's image, so its latent joins the video.
                generated = torch.cat([self.start_latent, generated], dim=2)
            self.history_latents = torch.cat([generated, self.history_latents], dim=2)
        else:
            self.history_latents = torch.cat([self.history_latents, generated], dim=2)
        self.total_generated_latent_frames += int(generated.shape[2])
        return generated

    @property
    def real_history_latents(self) -> torch.Tensor:
        """The generated latents without the zero context, in time order."""
        n = self.total_generated_latent_frames
        if self.variant == ModelVariant.ORIGINAL:
            return self.history_latents[:, :, :n]
        return self.history_latents[:, :, -n:]

    def latents_to_decode(self, section_number: int, is_last: bool, latent_window_size: int) -> torch.Tensor:
        """The new section plus one window of context, so the causal VAE sees what precedes each frame."""
        real = self.real_history_latents
        if section_number == 0:
            return real
        if self.variant == ModelVariant.ORIGINAL:
            count = latent_window_size * 2 + (1 if is_last else 0)
            return real[:, :, :count]
        return real[:, :, -latent_window_size * 2 :]
