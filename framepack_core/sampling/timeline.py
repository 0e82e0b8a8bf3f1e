"""Where each section lies in the finished video, for either model's generation order.

A video is the start latent followed by ``sections * window`` latents, 4 pixel frames each at 30 fps. F1
generates sections in time order; the original model generates the END first, so its section 1 (in generation
order, as progress counts them) is the last part of the video. Keyframes, timed prompts, the UI's timeline and
re-rolls all ask this module which section covers a time, so they can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from framepack_core.models.components import ModelVariant
from framepack_core.sampling.schedule import FPS, VAE_TEMPORAL_COMPRESSION, total_latent_sections, video_length


@dataclass(frozen=True)
class SectionSpan:
    """One section: its number in generation order (from 1) and the part of the video it makes, in seconds."""

    number: int
    time_index: int  # 0 for the section at the start of the video
    start_s: float
    end_s: float

    def covers(self, seconds: float) -> bool:
        return self.start_s <= seconds < self.end_s


def section_spans(model: ModelVariant | str, seconds: float, latent_window_size: int) -> list[SectionSpan]:
    """Every section's span, in generation order. The first span starts at 0 and the last ends at the video's
    real length (its start frame included), so every time in the video is covered exactly once."""
    count = total_latent_sections(seconds, latent_window_size)
    section_frames = latent_window_size * VAE_TEMPORAL_COMPRESSION
    video_s = video_length(seconds, latent_window_size).seconds
    spans = []
    for number in range(1, count + 1):
        time_index = number - 1 if ModelVariant(model) == ModelVariant.F1 else count - number
        # Whole frames divided once, so a boundary is the nearest float to its true time (1.2, not 3 * 0.4).
        end_s = video_s if time_index == count - 1 else (time_index + 1) * section_frames / FPS
        spans.append(SectionSpan(number, time_index, time_index * section_frames / FPS, end_s))
    return spans


def section_at(spans: list[SectionSpan], seconds: float) -> SectionSpan | None:
    """The section that makes the video at ``seconds`` (a time on a boundary belongs to the later section), or
    None for a time outside the video."""
    for span in spans:
        if span.covers(seconds):
            return span
    return None


def video_span_from(spans: list[SectionSpan], number: int) -> tuple[float, float]:
    """The part of the video that sections ``number`` and later (in generation order) make: what a re-roll from
    section ``number`` changes. For F1 that is the end of the clip; for the original model, its beginning."""
    later = [span for span in spans if span.number >= number]
    if not later:
        raise ValueError(f"there is no section {number}; the video has {len(spans)}")
    return min(span.start_s for span in later), max(span.end_s for span in later)
