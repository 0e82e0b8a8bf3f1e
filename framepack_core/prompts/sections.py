"""Which prompt each section is conditioned on, in VIDEO time, for either model's generation order.

Each prompt is in full force from the section that covers its time (``sampling.timeline``) until the section
before the next prompt's: a change takes effect at the start of the section its time falls in. The original
model samples the end of the video first, so its section 1 gets the LAST prompt; the prompts are never reversed.

With ``prompt_blend_sections`` N > 0, the N sections before each change ease into the next prompt: of the n
sections blended (N, or fewer when the previous prompt's own section is closer, which always stays pure) the j-th
(j = 1..n, in video time) gets weight j / (n + 1) of the next prompt and the rest of the previous one. The section
that covers a prompt's time therefore always gets that prompt unmixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from framepack_core.prompts.timed import check_prompt_times, parse_timed_prompt
from framepack_core.sampling.rerolls import prompt_for_section
from framepack_core.sampling.timeline import section_spans

if TYPE_CHECKING:
    from framepack_core.request import GenerationRequest


@dataclass(frozen=True)
class PromptMix:
    """The prompt texts a section is conditioned on and their weights (summing to 1); one text for most."""

    parts: tuple[tuple[str, float], ...]

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(text for text, _ in self.parts)


def section_prompt_mix(request: GenerationRequest, number: int, prompt: str | None = None) -> PromptMix:
    """The prompt mix of section ``number`` (from 1, in generation order, as progress counts sections) of a
    validated ``request``: for ``prompt`` when given, else for the prompt of the last re-roll at or before
    ``number`` that has one, else for the request's prompt (each plain or timed). Every per-section prompt choice
    goes through here, so they all read the video's time the same way."""
    if prompt is None:
        prompt = prompt_for_section(request.rerolls, number) or request.prompt
    model, seconds, window = request.model, request.seconds, request.latent_window_size
    timed = parse_timed_prompt(prompt)
    anchors = check_prompt_times(timed, model, seconds, window)
    anchors[0] = 0  # the earliest prompt also covers the time before it
    spans = section_spans(model, seconds, window)
    if not 1 <= number <= len(spans):
        raise ValueError(f"there is no section {number}; the video has {len(spans)}")
    here = spans[number - 1].time_index
    current = max(index for index, anchor in enumerate(anchors) if anchor <= here)
    if current + 1 < len(anchors):
        previous_anchor, next_anchor = anchors[current], anchors[current + 1]
        blended = min(request.prompt_blend_sections, next_anchor - previous_anchor - 1)
        j = blended + 1 - (next_anchor - here)
        if j >= 1:
            weight = j / (blended + 1)
            return PromptMix(((timed[current].text, 1.0 - weight), (timed[current + 1].text, weight)))
    return PromptMix(((timed[current].text, 1.0),))


def section_prompt_mixes(request: GenerationRequest) -> dict[int, PromptMix]:
    """Every section's mix, by section number (generation order, from 1)."""
    count = len(section_spans(request.model, request.seconds, request.latent_window_size))
    return {number: section_prompt_mix(request, number) for number in range(1, count + 1)}
