"""The Outputs tab: the viewer's past generations, and loading a past job's settings back into the form (from the
gallery, or from any mp4 this app made)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.context import PageContext
from app.ui.generate_tab import GenerateTab
from app.ui.lora_panel import video_lora_updates
from app.ui.render import readable_error, settings_to_inputs, video_settings
from app.ui.story import story_settings_to_inputs, video_story_settings
from framepack_core.errors import InvalidInputError


@dataclass
class GalleryTab:
    gallery: gr.Gallery
    records: gr.State  # the gallery's records (server paths), to map a click to its settings
    refresh: gr.Button
    loaded_note: gr.Markdown
    from_video: gr.File


def build_gallery_tab(records: gr.State) -> GalleryTab:
    """The tab, laid out in the current Blocks; ``records``: the page's state that holds the gallery's records."""
    with gr.Tab("Outputs", elem_id="outputs-tab"), gr.Accordion("Outputs", open=True, elem_id="outputs"):
        gallery = gr.Gallery(label="Past generations: click one to load its settings", columns=6, height=260,
                             fit_columns=False, allow_preview=False, preview=False, object_fit="cover",
                             buttons=[], elem_id="gallery")
        with gr.Row():
            refresh_btn = gr.Button("Refresh", size="sm", elem_id="refresh-gallery")
            loaded_note = gr.Markdown("", elem_id="loaded-note")
        # Any mp4 this app made carries its settings (see framepack_core.jobs.output_description).
        from_video = gr.File(label="Load settings from a video", file_types=[".mp4"], type="filepath",
                             height=130, elem_id="load-from-video")
    return GalleryTab(gallery=gallery, records=records, refresh=refresh_btn, loaded_note=loaded_note,
                      from_video=from_video)


def wire_gallery_tab(tab: GalleryTab, generate: GenerateTab, context: PageContext) -> None:
    """Refresh, and a click on a past generation or an uploaded video filling ``generate``'s form."""
    defaults, served = context.defaults, context.served
    settings_inputs = generate.form.settings()
    # What loading settings fills in: the form (the image first), the video player and file, and the note.
    loaded_outputs = [generate.form.image, *settings_inputs, generate.video, generate.final_file, tab.loaded_note]
    story_outputs = generate.story.settings()  # after the note, so the lists above keep their places
    # Then the LoRA panel: its rows set as the video's job had them (found in the folder by SHA-256), and Fuse.
    story_outputs += [*generate.lora.rows(), generate.lora.fuse]
    show_lora_path = not context.settings.logins_on

    def lora_part(video: Path) -> tuple[list[Any], str]:
        """The LoRA panel's updates and the note's words for ``video``; the panel as it is when the video carries
        no valid description (the caller has said so, or found the settings in the gallery's records)."""
        try:
            return video_lora_updates(context.loras, video, show_path=show_lora_path)
        except InvalidInputError:
            return [gr.skip()] * (len(generate.lora.rows()) + 1), ""

    def on_refresh_gallery(request: gr.Request) -> tuple[Any, list[dict[str, Any]]]:
        return context.past_generations(context.viewer_of(request))

    def load_settings(records: list[dict[str, Any]], event: gr.SelectData) -> list[Any]:
        record = records[event.index] if records and 0 <= event.index < len(records) else None
        if record is None:
            return [gr.skip()] * (len(loaded_outputs) + len(story_outputs))
        values = settings_to_inputs(record["settings"], defaults)
        name = Path(record["video"]).name
        note = f"Loaded the settings of `{name}`. Press Start to run them again."
        video_copy = served.serve(record["video"])
        image_copy = served.serve(record["input_image"]) if record["input_image"] else None
        try:
            note += video_story_settings(Path(record["video"]))[1]  # the input files to add again, if any
        except InvalidInputError:
            pass  # the gallery found its settings: the note only lacks the files
        lora_values, lora_note = lora_part(Path(record["video"]))
        return [image_copy or gr.skip(), *values, video_copy, video_copy, note + lora_note,
                *story_settings_to_inputs(record["settings"]), *lora_values]

    def load_from_video(path: str | None) -> list[Any]:
        """The settings of an uploaded video into the form (the start image stays as it is), as the gallery does;
        a file without a valid description leaves the form alone and says why."""
        if not path:
            return [gr.skip()] * (len(loaded_outputs) + len(story_outputs))
        try:
            values, note = video_settings(Path(path), defaults)
            story_values, add_again = video_story_settings(Path(path))
            lora_values, lora_note = video_lora_updates(context.loras, Path(path), show_path=show_lora_path)
        except InvalidInputError as error:
            message, hint = readable_error(error, path)
            gr.Warning(f"{message} How to fix: {hint}" if hint else message)
            note = f"**Could not load settings:** {message}" + (f" How to fix: {hint}" if hint else "")
            return [gr.skip()] * (len(loaded_outputs) - 1) + [note] + [gr.skip()] * len(story_outputs)
        return [gr.skip(), *values, gr.skip(), gr.skip(), note + add_again + lora_note, *story_values, *lora_values]

    tab.refresh.click(on_refresh_gallery, outputs=[tab.gallery, tab.records], api_visibility="private",
                      concurrency_limit=None)
    tab.gallery.select(load_settings, inputs=[tab.records], outputs=loaded_outputs + story_outputs, api_visibility="private",
                       show_progress="hidden", concurrency_limit=None)
    tab.from_video.upload(load_from_video, inputs=[tab.from_video], outputs=loaded_outputs + story_outputs,
                          api_visibility="private", show_progress="hidden", concurrency_limit=None)
