"""Re-rolls, section by section: which seed and prompt a section gets, and which part of the video a re-roll
changes.

A request's ``rerolls`` say: from section K on (numbered from 1 in generation order, as progress shows them) the
job's one CPU generator is re-seeded with the re-roll's seed, at the start of section K, and, when the re-roll has
a prompt, sections K and later use it. So a re-rolled spec run from scratch gives the same latents as the re-roll
that continued the old job's state (``framepack_core.jobs.reroll``).

Pure functions, no torch import at module level: the page and the CLI use ``reroll_span`` to say which part of
the clip will change before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from framepack_core.errors import InvalidInputError
from framepack_core.models.components import ModelVariant
from framepack_core.request import Reroll
from framepack_core.sampling.schedule import (
    FPS,
    overlap_pixel_frames,
    pixel_frames_for_latents,
    total_latent_sections,
    video_length,
)
from framepack_core.sampling.timeline import section_spans, video_span_from

if TYPE_CHECKING:
    import torch

    from framepack_core.request import GenerationRequest


def reseed_for_section(generator: torch.Generator, rerolls: tuple[Reroll, ...], section: int) -> bool:
    """Re-seed ``generator`` when a re-roll starts at ``section`` (1-based, generation order); True if it did.
    Only at that very section: a job resumed after it restores the generator state its checkpoint saved."""
    for reroll in rerolls:
        if reroll.from_section == section:
            generator.manual_seed(reroll.seed)
            return True
    return False


def prompt_for_section(rerolls: tuple[Reroll, ...], section: int) -> str | None:
    """The prompt a re-roll gives ``section``: that of the latest re-roll at or before it that has one, else None
    (the request's own prompt)."""
    prompt = None
    for reroll in rerolls:
        if reroll.from_section <= section and reroll.prompt is not None:
            prompt = reroll.prompt
    return prompt


def with_reroll(rerolls: tuple[Reroll, ...], from_section: int, seed: int, prompt: str | None) -> tuple[Reroll, ...]:
    """The re-rolls after one more from ``from_section``: earlier re-rolls at or after it are dropped, since the
    sections they made are made again (a re-roll of a re-roll from an earlier section replaces it)."""
    return tuple(r for r in rerolls if r.from_section < from_section) + (Reroll(from_section, seed, prompt),)


def check_rerolls(request: GenerationRequest) -> None:
    """A re-roll must start at a section the video has (``InvalidInputError`` naming ``reroll_from``)."""
    sections = total_latent_sections(request.seconds, request.latent_window_size)
    for reroll in request.rerolls:
        check_reroll_section(reroll.from_section, sections)


def check_reroll_section(from_section: int, sections: int) -> None:
    if not 1 <= from_section <= sections:
        raise InvalidInputError("reroll_from", f"section {from_section} is out of range: this job has {sections} "
                                               "section(s), numbered in generation order as progress shows them",
                                f"Give a section from 1 to {sections}.")


@dataclass(frozen=True)
class RerollSpan:
    """What a re-roll from ``from_section`` changes in a video of ``total_sections`` sections, in seconds.

    ``sections_s``: the part sections ``from_section`` and later make (``timeline.video_span_from``). The new
    section ``from_section`` is also cross-faded into the kept section next to it, so a little more changes:
    ``changed_s``; ``kept_s`` is the part that stays bit-identical (None when nothing does)."""

    model: ModelVariant
    from_section: int
    total_sections: int
    sections_s: tuple[float, float]
    changed_s: tuple[float, float]
    kept_s: tuple[float, float] | None
    kept_frames: int
    total_frames: int

    def describe(self) -> str:
        """One plain sentence, e.g. "Re-rolling sections 3-5 of 5 in generation order: ..."."""
        k, n = self.from_section, self.total_sections
        which = f"section {k} of {n}" if k == n else f"sections {k}-{n} of {n}"
        changed = self.changed_s[1] - self.changed_s[0]
        they = "it makes" if k == n else "they make"
        if self.model == ModelVariant.ORIGINAL:
            made = f"{they} the first {self.sections_s[1]:.2f} s of the video (the original model generates " \
                   "the end first)"
            where_changed, where_kept = f"the first {changed:.2f} s change", "the last"
        else:
            made = f"{they} the video from {self.sections_s[0]:.2f} s to its end"
            where_changed, where_kept = f"the last {changed:.2f} s change", "the first"
        if self.kept_s is None:
            return (f"Re-rolling {which} in generation order: {made}; the whole video changes "
                    f"({self.total_frames} frames).")
        kept = self.kept_s[1] - self.kept_s[0]
        if self.kept_frames == 0:
            return (f"Re-rolling {which} in generation order: {made}; with the cross-fade into the section before, "
                    f"the whole video's frames change, though the kept section's latents stay the same.")
        return (f"Re-rolling {which} in generation order: {made}; with the cross-fade into the kept sections, "
                f"{where_changed} and {where_kept} {kept:.2f} s ({self.kept_frames} frames) are kept bit-identical.")


def reroll_span(model: ModelVariant | str, seconds: float, latent_window_size: int, from_section: int) -> RerollSpan:
    """Which part of the video a re-roll from ``from_section`` changes (``InvalidInputError`` for a section the
    video does not have). The kept frames are those the section writer had encoded for good after the sections
    before it (``media.video_io``): each section's decoded chunk less the ``overlap`` edge frames the next
    section blends into."""
    model = ModelVariant(model)
    window = latent_window_size
    spans = section_spans(model, seconds, window)
    total = len(spans)
    check_reroll_section(from_section, total)
    total_frames = video_length(seconds, window).pixel_frames
    overlap = overlap_pixel_frames(window)
    kept_frames = sum(pixel_frames_for_latents(_decoded_latents(model, number, total, window)) - overlap
                      for number in range(1, from_section))
    changed_frames = total_frames - kept_frames
    sections_s = video_span_from(spans, from_section)
    video_s = total_frames / FPS
    if from_section == 1:
        kept_s = None
        changed_s = (0.0, video_s)
    elif model == ModelVariant.ORIGINAL:  # kept: the end of the clip
        changed_s, kept_s = (0.0, changed_frames / FPS), (changed_frames / FPS, video_s)
    else:
        changed_s, kept_s = (kept_frames / FPS, video_s), (0.0, kept_frames / FPS)
    return RerollSpan(model, from_section, total, sections_s, changed_s, kept_s, kept_frames, total_frames)


def _decoded_latents(model: ModelVariant, number: int, total: int, window: int) -> int:
    """Latent frames decoded after section ``number`` (``LatentHistory.latents_to_decode``): the first section
    alone (with the start latent for F1), every later one with one window of context; the last original section
    also holds the start latent."""
    if model == ModelVariant.F1:
        return window + 1 if number == 1 else 2 * window
    last = 1 if number == total else 0
    return (window if number == 1 else 2 * window) + last
