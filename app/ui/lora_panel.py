"""The LoRA accordion under the form: one weight slider per file of the LoRA folder (0: off), Refresh, and "Fuse
LoRAs". The pure parts are ``app.ui.lora``; this module lays out the widgets and makes their updates.

The rows are a fixed number of sliders, shown and labelled by the listing. Which file each row stands for is kept
in server-side state, and Start resolves those names in the folder again: the browser sends only weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components import Component

from app.ui.lora import MAX_LORA_ROWS, WEIGHT_RANGE, folder_words, panel_note, panel_rows, weights_from_spec
from app.ui.render import FIELD_LABELS
from framepack_core.jobs.output_description import read_output_description
from framepack_core.lora.library import LoraFolder


@dataclass
class LoraPanel:
    note: gr.Markdown
    names: gr.State  # the file name each shown row stands for, in row order
    weights: list[gr.Slider]
    fuse: gr.Checkbox
    refresh: gr.Button

    def inputs(self) -> list[Component]:
        """What Start takes after the Story panel's inputs, in ``lora_inputs``' order."""
        return [self.names, self.fuse, *self.weights]

    def rows(self) -> list[Component]:
        """What a refresh or a loaded video redraws: the names, the note, then the sliders."""
        return [self.names, self.note, *self.weights]


def lora_inputs(values: Sequence[Any]) -> tuple[list[str], list[float | None], bool]:
    """``LoraPanel.inputs()``' values as (row names, the shown rows' weights, fuse): ``lora_request_values``'
    arguments after the folder."""
    names, fuse, *weights = values
    names = list(names or [])
    return names, list(weights[:len(names)]), bool(fuse)


def build_lora_panel(folder: LoraFolder, *, show_path: bool) -> LoraPanel:
    """The LoRA accordion, closed, laid out in the current Blocks. Listed without hashing, so the page is quick
    to build whatever the files' sizes."""
    files = folder.files(with_sha256=False)
    rows = panel_rows(files)
    with gr.Accordion("LoRA", open=False, elem_id="lora"):
        with gr.Row(equal_height=False, elem_id="lora-head"):
            note = gr.Markdown(panel_note(files, folder_words(folder, show_path=show_path)), elem_id="lora-note")
            refresh = gr.Button("Refresh", size="sm", scale=0, min_width=90, elem_id="lora-refresh")
        names = gr.State([row.name for row in rows])
        weights = []
        for index in range(MAX_LORA_ROWS):
            row = rows[index] if index < len(rows) else None
            weights.append(gr.Slider(*WEIGHT_RANGE, value=0.0, step=0.05, label=row.name if row else "",
                                     info=row.info if row else None, visible=row is not None,
                                     elem_id=f"lora-weight-{index}", elem_classes=["fp-lora-row"]))
        fuse = gr.Checkbox(value=False, label=FIELD_LABELS["lora_fuse"], elem_id="lora-fuse",
                           info="Merges the LoRAs into the model's weights for the job: faster steps.")
    return LoraPanel(note=note, names=names, weights=weights, fuse=fuse, refresh=refresh)


def row_updates(folder: LoraFolder, weights: Mapping[str, float], *, show_path: bool,
                with_sha256: bool = False) -> list[Any]:
    """``LoraPanel.rows()``' updates for the folder as it is now, each file at its weight in ``weights``."""
    files = folder.files(with_sha256=with_sha256)
    rows = panel_rows(files, weights)
    sliders = [gr.update(visible=True, label=row.name, info=row.info, value=row.weight) for row in rows]
    sliders += [gr.update(visible=False, value=0.0)] * (MAX_LORA_ROWS - len(rows))
    return [[row.name for row in rows], panel_note(files, folder_words(folder, show_path=show_path)), *sliders]


def refreshed_rows(folder: LoraFolder, names: Sequence[str] | None, weights: Sequence[float | None], *,
                   show_path: bool) -> list[Any]:
    """The rows for the folder as it is now, each file that was shown keeping its weight."""
    kept = {name: float(weight or 0.0) for name, weight in zip(names or [], weights, strict=False)}
    return row_updates(folder, kept, show_path=show_path)


def video_lora_updates(folder: LoraFolder, video: Path, *, show_path: bool) -> tuple[list[Any], str]:
    """The rows and the fuse box set as the job that made ``video`` had them (its LoRAs found in the folder by
    SHA-256), and what the page should add to its note (those the folder lacks). Raises ``InvalidInputError`` as
    ``render.video_settings`` does."""
    spec = read_output_description(video, field="video").spec
    weights, note = weights_from_spec(spec.inputs, folder.files())
    fuse = bool(spec.settings.get("lora_fuse", False))
    return [*row_updates(folder, weights, show_path=show_path), fuse], note


def wire_lora_panel(demo: gr.Blocks, panel: LoraPanel, folder: LoraFolder, *, show_path: bool) -> None:
    """Refresh, and the listing drawn again when the page opens (files may have come since the app started)."""
    private = {"api_visibility": "private", "show_progress": "hidden", "queue": False}

    def on_refresh(names: list[str] | None, *weights: float | None) -> list[Any]:
        return refreshed_rows(folder, names, weights, show_path=show_path)

    panel.refresh.click(on_refresh, inputs=[panel.names, *panel.weights], outputs=panel.rows(), **private)
    demo.load(lambda: row_updates(folder, {}, show_path=show_path), outputs=panel.rows(), **private)
