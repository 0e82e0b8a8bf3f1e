"""The Story panel's pure pieces: the section timeline's rows, per-section prompts as timed-prompt text, the story
widgets' values as request fields and back, and what a re-roll will change.

Nothing here touches Gradio's components or the service (``app.ui.story_panel`` wires them). Every "which section
covers this time" question goes to ``framepack_core.sampling.timeline``, so the page and the engine agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framepack_core.errors import InvalidInputError
from framepack_core.jobs.output_description import read_output_description
from framepack_core.models.components import ModelVariant
from framepack_core.request import Keyframe
from framepack_core.sampling.timeline import SectionSpan, section_at, section_spans, video_span_from

# The timeline has this many rows at most; a longer video shows its first sections and says where it stops (the
# CLI's --keyframe and the prompt box's [Ns: ...] syntax reach every section).
MAX_TIMELINE_ROWS = 16
# The story settings the page restores from a video, in the order story_settings_to_inputs returns them. The
# files (end image, clip, keyframe images) cannot be restored: a description holds only their SHA-256.
STORY_SETTINGS = ("end_strength", "end_image_embedding_weight", "loop", "prompt_blend_sections",
                  "context_frames", "extend_output")
STORY_DEFAULTS: dict[str, Any] = {"end_strength": 1.0, "end_image_embedding_weight": 0.0, "loop": False,
                                  "prompt_blend_sections": 0, "context_frames": 0, "extend_output": "new"}
EXTEND_OUTPUT_CHOICES = [("Only the new part", "new"), ("The clip and the new part, joined", "joined")]


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def spans_in_video_order(model: ModelVariant | str, seconds: float, window: int) -> list[SectionSpan]:
    """The sections of a video with these settings, from its start to its end; [] for settings that make none
    (the form's own checks then say why)."""
    try:
        spans = section_spans(model, float(seconds), int(window))
    except (TypeError, ValueError, ZeroDivisionError):
        return []
    return sorted(spans, key=lambda span: span.time_index)


@dataclass(frozen=True)
class TimelineRow:
    """One row of the timeline: a section in video order, with the words the page shows for it."""

    span: SectionSpan
    label: str


def timeline_rows(model: ModelVariant | str, seconds: float, window: int) -> list[TimelineRow]:
    """The sections in video order, each with its times and when it is made ("made 1st" is generated first)."""
    spans = spans_in_video_order(model, seconds, window)
    rows = []
    for span in spans:
        rows.append(TimelineRow(span, f"**{span.start_s:.1f} – {span.end_s:.1f} s**  \nmade {ordinal(span.number)}"))
    return rows


def timeline_note(model: ModelVariant | str, seconds: float, window: int) -> str:
    """The words above the timeline: how many sections, in which order they are made, and any rows left out."""
    spans = spans_in_video_order(model, seconds, window)
    if not spans:
        return "Set a valid length and latent window to see the sections."
    count = len(spans)
    if ModelVariant(model) == ModelVariant.F1:
        order = "F1 makes them in order, from the start of the video to its end."
    else:
        order = ("The original model makes the **end of the video first**: the last row is made 1st, and the "
                 "video grows back towards the start image.")
    note = f"{count} section{'s' if count != 1 else ''} of about {spans[0].end_s - spans[0].start_s:.1f} s. {order}"
    if count > MAX_TIMELINE_ROWS:
        note += (f" Only the first {MAX_TIMELINE_ROWS} are listed here (up to {spans[MAX_TIMELINE_ROWS - 1].end_s:.1f}"
                 f" s); write `[{spans[MAX_TIMELINE_ROWS].start_s:.1f}s: ...]` in the prompt box for later times.")
    return note


def prompt_time(spans: Sequence[SectionSpan], span: SectionSpan) -> str:
    """``span``'s start time as short text that still falls inside ``span`` once parsed (3.5999999999999996 is
    written 3.6; a rounding that would land in the section before is rounded up instead)."""
    text = f"{round(span.start_s, 3):g}"
    if section_at(list(spans), float(text)) != span:
        text = f"{math.ceil(span.start_s * 1000) / 1000:g}"
    return text


def timed_prompt(prompt: str, section_prompts: Sequence[str | None], spans: Sequence[SectionSpan]) -> str:
    """The per-section prompts (video order, one per span) as ``[0s: ...] [3.6s: ...]``; the prompt box as it is
    when every row is empty. A row left empty keeps the prompt before it (the prompt box's, for the first rows),
    and a time is written only where the prompt changes."""
    texts = [(text or "").strip() for text in section_prompts]
    if not any(texts):
        return prompt
    parts, current, written = [], prompt.strip(), None
    for span, text in zip(spans, texts, strict=False):
        current = text or current
        if current and current != written:
            parts.append(f"[{prompt_time(spans, span)}s: {current}]")
            written = current
    return " ".join(parts)


def section_keyframes(images: Sequence[str | None], spans: Sequence[SectionSpan]) -> tuple[Keyframe, ...]:
    """An image dropped on a row is a keyframe at that section's start time (rows past the video are ignored)."""
    return tuple(Keyframe(span.start_s, Path(image)) for span, image in zip(spans, images, strict=False) if image)


@dataclass(frozen=True)
class StoryInputs:
    """What the Story panel's widgets hold when Start is pressed (file widgets as paths)."""

    end_image: str | None = None
    end_strength: float = 1.0
    end_image_embedding_weight: float = 0.0
    loop: bool = False
    prompt_blend_sections: float | None = 0
    extend_video: str | None = None
    context_frames: float | None = None
    extend_output: str = "new"
    section_images: tuple[str | None, ...] = ()
    section_prompts: tuple[str | None, ...] = ()


def story_request_values(story: StoryInputs, values: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields the Story panel sets, given the form's other ``values`` (prompt, model, seconds,
    latent_window_size): the per-section prompts become the prompt's timed syntax, and the dropped images
    keyframes at their sections' start times."""
    spans = spans_in_video_order(values.get("model") or "original", values.get("seconds") or 0,
                                 values.get("latent_window_size") or 0)[:MAX_TIMELINE_ROWS]
    blend = story.prompt_blend_sections
    fields: dict[str, Any] = {
        "end_image": None if story.loop or not story.end_image else Path(story.end_image),  # Loop: the start image
        "end_strength": story.end_strength, "end_image_embedding_weight": story.end_image_embedding_weight,
        "loop": bool(story.loop), "prompt_blend_sections": 0 if blend is None else blend,
        "extend_video": Path(story.extend_video) if story.extend_video else None,
        "context_frames": story.context_frames or None,  # 0 or empty: automatic
        "extend_output": story.extend_output or "new",
        "keyframes": section_keyframes(story.section_images, spans),
        "prompt": timed_prompt(str(values.get("prompt") or ""), story.section_prompts, spans)}
    return {name: value for name, value in fields.items() if value is not None}


def story_settings_to_inputs(settings: Mapping[str, Any]) -> list[Any]:
    """Saved settings -> values for the panel's STORY_SETTINGS widgets (missing ones at their defaults)."""
    return [STORY_DEFAULTS[name] if settings.get(name) is None else settings[name] for name in STORY_SETTINGS]


def files_to_add_again(inputs: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """What a loaded video's job used that its description cannot give back (files are stored by SHA-256 only):
    a sentence for the page, or "" when there is nothing to add."""
    wanted = []
    if inputs.get("end_image"):
        wanted.append(f"the end image (SHA-256 `{inputs['end_image'][:12]}…`)")
    if inputs.get("extend_video"):
        wanted.append(f"the clip to extend (SHA-256 `{inputs['extend_video'][:12]}…`)")
    keyframes = inputs.get("keyframes") or ()
    if keyframes:
        times = ", ".join(f"{float(k['seconds']):g} s" for k in keyframes)
        wanted.append(f"the keyframe image{'s' if len(keyframes) > 1 else ''} at {times}")
    if not wanted:
        return ""
    text = "; ".join(wanted)
    return f" Files are not stored in a video: add {text} again in the Story panel."


@dataclass(frozen=True)
class RerollPlan:
    """What re-rolling a finished job from one section changes."""

    from_section: int
    last_section: int
    changed_s: tuple[float, float]
    kept_s: tuple[float, float] | None  # None when the whole video changes
    text: str


def reroll_plan(model: ModelVariant | str, seconds: float, window: int, from_section: int) -> RerollPlan:
    """Which sections and which part of the video a re-roll from ``from_section`` (generation order) remakes, said
    plainly; the original model's first sections are the END of the video."""
    spans = section_spans(model, float(seconds), int(window))
    if not 1 <= from_section <= len(spans):
        raise InvalidInputError("reroll_from", f"there is no section {from_section}; the video has {len(spans)}",
                                "Pick a section of the timeline.")
    start, end = video_span_from(spans, from_section)
    video_end = max(span.end_s for span in spans)
    kept = None if (start, end) == (0.0, video_end) else ((end, video_end) if start == 0.0 else (0.0, start))
    numbers = f"Section {from_section}" if from_section == len(spans) else f"Sections {from_section}-{len(spans)}"
    verb = "changes" if from_section == len(spans) else "change"
    text = f"{numbers} {verb}: {start:.1f} s – {end:.1f} s of the video"
    if ModelVariant(model) == ModelVariant.ORIGINAL:
        text += " (the original model makes the end first)"
    text += "; " + (f"{kept[0]:.1f} s – {kept[1]:.1f} s is kept." if kept else "nothing is kept.")
    return RerollPlan(from_section, len(spans), (start, end), kept, text)


def reroll_seed(text: Any, random_seed: int) -> int:
    """The re-roll's seed: the box's whole number, or ``random_seed`` when it is empty."""
    if text is None or not str(text).strip():
        return random_seed
    try:
        value = float(str(text).strip())
    except (TypeError, ValueError):
        raise InvalidInputError("seed", f"{text!r} is not a whole number", "Leave it empty for a random seed.") from None
    if not value.is_integer() or value < 0:
        raise InvalidInputError("seed", f"{text!r} is not a whole number from 0", "Leave it empty for a random seed.")
    return int(value)


def video_story_settings(video: Path) -> tuple[list[Any], str]:
    """The STORY_SETTINGS values of a video this app made, and what the page should add to its note: the input
    files its job used, which a description cannot give back. Raises ``InvalidInputError`` as ``video_settings``."""
    spec = read_output_description(video, field="video").spec
    return story_settings_to_inputs(spec.settings), files_to_add_again(spec.inputs, spec.settings)
