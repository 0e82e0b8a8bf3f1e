"""The Story panel under the form: end frame and loop, the section timeline (a keyframe and a prompt per section),
extending a clip, and re-rolling a finished job from one of its sections.

Closed by default, so the first-use page stays as simple as before. The pure parts (rows, timed prompts, what a
re-roll changes) are ``app.ui.story``; this module lays out the widgets and wires their handlers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from app.ui.render import FIELD_LABELS, upload_path
from app.ui.story import (
    EXTEND_OUTPUT_CHOICES,
    MAX_TIMELINE_ROWS,
    STORY_DEFAULTS,
    StoryInputs,
    timeline_note,
    timeline_rows,
)
from framepack_core.request import MAX_BLEND_SECTIONS, MAX_CONTEXT_FRAMES

END_NOTE = ("**Original model only** (F1 has no slot for an end frame). The video ends at this image; strength 0 "
            "is the same as no end image.")
EXTEND_NOTE = ("Continue a clip (mp4, mov or webm). Leave the start image empty to start from the clip's last "
               "frame.")
REROLL_IDLE = ("Re-roll: once a job has **finished** in the area above (or you pick one in the Queue tab), its "
               "sections show here, and you can make them again from any section with a new seed or prompt.")


@dataclass
class TimelineRowWidgets:
    row: gr.Row
    label: gr.Markdown
    image: gr.Image  # an image dropped here is a keyframe at the section's start
    prompt: gr.Textbox


@dataclass
class StoryPanel:
    end_note: gr.Markdown
    end_image: gr.Image
    end_strength: gr.Slider
    end_image_embedding_weight: gr.Slider
    loop: gr.Checkbox
    timeline_note: gr.Markdown
    rows: list[TimelineRowWidgets]
    prompt_blend_sections: gr.Number
    extend_video: gr.File
    context_frames: gr.Number
    extend_output: gr.Radio
    reroll_job: gr.State  # the finished job the re-roll part shows, or None
    reroll_note: gr.Markdown
    reroll_from: gr.Radio  # one choice per section: "re-roll from here"
    reroll_seed: gr.Textbox
    reroll_prompt: gr.Textbox
    reroll_plan: gr.Markdown
    reroll_start: gr.Button

    def inputs(self) -> list[Component]:
        """What Start takes after the form's inputs, in ``story_inputs``' order."""
        return [self.end_image, self.end_strength, self.end_image_embedding_weight, self.loop,
                self.prompt_blend_sections, self.extend_video, self.context_frames, self.extend_output,
                *(row.image for row in self.rows), *(row.prompt for row in self.rows)]

    def settings(self) -> list[Component]:
        """The widgets ``story.STORY_SETTINGS`` names, in that order (what loading a video's settings fills)."""
        return [self.end_strength, self.end_image_embedding_weight, self.loop, self.prompt_blend_sections,
                self.context_frames, self.extend_output]

    def section_widgets(self) -> list[Component]:
        """The section rows (what a new length, window or model updates), then the note above them."""
        return [*(row.row for row in self.rows), *(row.label for row in self.rows), self.timeline_note]


def story_inputs(values: Sequence[Any]) -> StoryInputs:
    """``StoryPanel.inputs()``' values (uploads unopened, as Start gets them) as a ``StoryInputs``."""
    (end_image, end_strength, weight, loop, blend, extend_video, context_frames, extend_output,
     *rows) = values
    count = len(rows) // 2
    return StoryInputs(end_image=upload_path(end_image), end_strength=end_strength, end_image_embedding_weight=weight,
                       loop=bool(loop), prompt_blend_sections=blend, extend_video=upload_path(extend_video),
                       context_frames=context_frames, extend_output=extend_output,
                       section_images=tuple(upload_path(image) for image in rows[:count]),
                       section_prompts=tuple(rows[count:]))


def build_story_panel(defaults: dict[str, Any]) -> StoryPanel:
    """The Story accordion, closed, laid out in the current Blocks (under the form's settings)."""
    seconds, window, model = defaults["seconds"], defaults["latent_window_size"], defaults["model"]
    with gr.Accordion("Story: end frame, keyframes, timed prompts, extend, re-roll", open=False, elem_id="story"):
        with gr.Accordion("End frame and loop", open=True, elem_id="story-end"):
            end_note_md = gr.Markdown(END_NOTE, elem_id="end-note")
            with gr.Row(equal_height=False):
                end_image = gr.Image(label=FIELD_LABELS["end_image"], type="filepath", image_mode=None,
                                     sources=["upload", "clipboard"], height=190, min_width=160, scale=1,
                                     elem_id="end-image")
                with gr.Column(scale=2, min_width=200):
                    loop = gr.Checkbox(value=False, label=FIELD_LABELS["loop"],
                                       info="One click: the video ends where it starts.", elem_id="loop")
                    end_strength = gr.Slider(0, 1, value=1.0, step=0.05, label=FIELD_LABELS["end_strength"],
                                             info="1: end exactly at the image; lower: looser.",
                                             elem_id="end-strength")
                    end_weight = gr.Slider(0, 1, value=0.0, step=0.05,
                                           label=FIELD_LABELS["end_image_embedding_weight"],
                                           info="0 keeps the start image's look; 0.5 mixes the two.",
                                           elem_id="end-embedding-weight")
        with gr.Accordion("Section timeline: a keyframe and a prompt per section", open=True, elem_id="timeline"):
            note = gr.Markdown(timeline_note(model, seconds, window), elem_id="timeline-note")
            shown = timeline_rows(model, seconds, window)
            rows = []
            for index in range(MAX_TIMELINE_ROWS):
                row_info = shown[index] if index < len(shown) else None
                with gr.Row(visible=row_info is not None, equal_height=False,
                            elem_id=f"section-row-{index}", elem_classes=["fp-section-row"]) as row:
                    label = gr.Markdown(row_info.label if row_info else "", elem_id=f"section-label-{index}",
                                        min_height=0)
                    image = gr.Image(label="Keyframe", type="filepath", image_mode=None,
                                     sources=["upload", "clipboard"], height=130, min_width=150, scale=1,
                                     elem_id=f"section-image-{index}")
                    prompt = gr.Textbox(label="Prompt from here", placeholder="empty: keep the prompt before",
                                        lines=2, max_lines=4, scale=3, elem_id=f"section-prompt-{index}")
                rows.append(TimelineRowWidgets(row, label, image, prompt))
            blend = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_BLEND_SECTIONS,
                              label=FIELD_LABELS["prompt_blend_sections"],
                              info="0 switches prompts at once; 1-3 sections blend each change smoothly.",
                              elem_id="prompt-blend")
        with gr.Accordion("Extend a video", open=False, elem_id="story-extend"):
            gr.Markdown(EXTEND_NOTE)
            with gr.Row(equal_height=False):
                extend_video = gr.File(label=FIELD_LABELS["extend_video"], file_types=[".mp4", ".mov", ".webm"],
                                       type="filepath", height=110, scale=2, min_width=200, elem_id="extend-video")
                with gr.Column(scale=2, min_width=200):
                    # 0, not empty: Gradio shows an empty number box as 0 once it is drawn.
                    context_frames = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_CONTEXT_FRAMES,
                                               label=FIELD_LABELS["context_frames"],
                                               info="0: automatic, enough for the model's full context.",
                                               elem_id="context-frames")
                    extend_output = gr.Radio(EXTEND_OUTPUT_CHOICES, value=STORY_DEFAULTS["extend_output"],
                                             label=FIELD_LABELS["extend_output"], elem_id="extend-output")
        with gr.Accordion("Re-roll a finished job from a section", open=True, elem_id="story-reroll"):
            reroll_job = gr.State(None)
            reroll_note = gr.Markdown(REROLL_IDLE, elem_id="reroll-note")
            reroll_from = gr.Radio([], label="Re-roll from here", visible=False, elem_id="reroll-from")
            with gr.Row(equal_height=True):
                # A text box: an empty number box reads as 0, which is a seed, not "random".
                reroll_seed_box = gr.Textbox(value="", label="New seed", placeholder="empty: random",
                                             visible=False, scale=1, min_width=190, elem_id="reroll-seed")
                reroll_prompt = gr.Textbox(label="New prompt (empty: the same)", visible=False, scale=3,
                                           elem_id="reroll-prompt")
            reroll_plan_md = gr.Markdown("", elem_id="reroll-plan")
            reroll_start = gr.Button("Re-roll from this section", variant="primary", visible=False,
                                     interactive=False, elem_id="reroll-start")
    return StoryPanel(end_note=end_note_md, end_image=end_image, end_strength=end_strength, end_image_embedding_weight=end_weight,
                      loop=loop, timeline_note=note, rows=rows, prompt_blend_sections=blend,
                      extend_video=extend_video, context_frames=context_frames, extend_output=extend_output,
                      reroll_job=reroll_job, reroll_note=reroll_note, reroll_from=reroll_from,
                      reroll_seed=reroll_seed_box, reroll_prompt=reroll_prompt, reroll_plan=reroll_plan_md,
                      reroll_start=reroll_start)


# Handlers (plain functions, so tests call them without a browser) -----------------------------------------------

def section_updates(model: str | None, seconds: float | None, window: float | None) -> list[Any]:
    """The rows' visibility and labels, then the note, for the form's model, length and window."""
    rows = timeline_rows(model or "original", seconds or 0, int(window or 0))
    shown = rows[:MAX_TIMELINE_ROWS]
    visible = [gr.update(visible=index < len(shown)) for index in range(MAX_TIMELINE_ROWS)]
    labels = [shown[index].label if index < len(shown) else gr.skip() for index in range(MAX_TIMELINE_ROWS)]
    return [*visible, *labels, timeline_note(model or "original", seconds or 0, int(window or 0))]


def loop_updates(loop: bool) -> Any:
    """Loop uses the start image as the end: the end image box is cleared and locked while it is on."""
    return gr.update(value=None, interactive=False) if loop else gr.update(interactive=True)


def end_note(model: str | None) -> str:
    """The note over the end frame: on F1, that an end image or a loop will be refused."""
    if model == "f1":
        return END_NOTE + " **F1 is chosen:** an end image or a loop will be refused; choose the original model."
    return END_NOTE


def wire_story_panel(panel: StoryPanel, form: Any) -> None:
    """The panel's own handlers. ``form``: the JobForm whose model, length and window shape the timeline."""
    private = {"api_visibility": "private", "show_progress": "hidden"}
    for control in (form.model, form.seconds, form.latent_window_size):
        control.change(section_updates, inputs=[form.model, form.seconds, form.latent_window_size],
                       outputs=panel.section_widgets(), queue=False, trigger_mode="always_last", **private)
    form.model.change(end_note, inputs=[form.model], outputs=[panel.end_note], queue=False, **private)
    panel.loop.change(loop_updates, inputs=[panel.loop], outputs=[panel.end_image], queue=False, **private)
