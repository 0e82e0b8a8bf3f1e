"""The batch panel, under the job form: several start images, a prompt list and seeds, with every other setting
taken from the form; "Queue batch" queues one job per image x prompt x seed (``framepack_core.jobs.batch``), all
checked before any is queued. The panel says how many jobs it will make before the button is pressed; the Queue
tab shows the batch as a group and cancels it as one."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components import Component

from app.access import Viewer
from app.service.batches import queue_batch
from app.ui.context import PageContext
from app.ui.lora import lora_request_values
from app.ui.lora_panel import LoraPanel, lora_inputs
from app.ui.render import JOB_FIELDS, build_request, readable_error
from framepack_core.errors import FramePackError, InvalidInputError
from framepack_core.jobs.batch import MAX_BATCH_JOBS, BatchJob, expand_batch, parse_seeds, prompt_lines, seed_run

MAX_PAGE_BATCH_IMAGES = 32


@dataclass
class BatchPanel:
    images: gr.File
    prompts: gr.Textbox
    seeds: gr.Textbox
    seed_count: gr.Number
    count: gr.Markdown
    queue: gr.Button
    note: gr.Markdown

    def inputs(self) -> list[Component]:
        return [self.images, self.prompts, self.seeds, self.seed_count]


def build_batch_panel() -> BatchPanel:
    """The panel, laid out (closed) in the current Blocks."""
    with gr.Accordion("Batch: several images, prompts and seeds", open=False, elem_id="batch-panel"):
        images = gr.File(label="Start images", file_count="multiple", file_types=["image"], type="filepath",
                         height=140, elem_id="batch-images")
        prompts = gr.Textbox(label="Prompts, one per line", lines=3, max_lines=12, elem_id="batch-prompts",
                             placeholder="Empty: the prompt above. Blank lines and lines starting with # are "
                                         "skipped.")
        with gr.Row(equal_height=True):
            seeds = gr.Textbox(label="Seeds", placeholder="e.g. 1,2,3 (empty: the seed above)", scale=1,
                               elem_id="batch-seeds")
            # Counting up from the form's seed: the same panel queues the same jobs again.
            seed_count = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_BATCH_JOBS, scale=1,
                                   label="or N seeds from Seed", elem_id="batch-seed-count")
        count = gr.Markdown(batch_size_text(None, "", "", None), elem_id="batch-count")
        queue_btn = gr.Button("Queue batch", elem_id="batch-queue")
        note = gr.Markdown("", elem_id="batch-note")
    return BatchPanel(images=images, prompts=prompts, seeds=seeds, seed_count=seed_count, count=count,
                      queue=queue_btn, note=note)


def wire_batch_panel(panel: BatchPanel, settings: Sequence[Component], context: PageContext,
                     lora: LoraPanel | None = None) -> None:
    """The count kept current as the panel changes, and "Queue batch". ``settings``: the form's components in
    ``JOB_FIELDS`` order, whose values every job of the batch takes; ``lora``: the LoRA panel, whose LoRAs every
    job takes too."""
    lora_components = lora.inputs() if lora is not None else []
    for component in panel.inputs():
        component.change(batch_size_text, inputs=panel.inputs(), outputs=[panel.count], api_visibility="private",
                         queue=False, show_progress="hidden")

    def on_queue(request: gr.Request, images: Any, prompts: str, seeds: str, seed_count: float | None,
                 *values: Any) -> str:
        return queue_page_batch(context, context.viewer_of(request), images, prompts, seeds, seed_count,
                                dict(zip(JOB_FIELDS, values[:len(JOB_FIELDS)], strict=True)),
                                lora_values=values[len(JOB_FIELDS):])

    panel.queue.click(on_queue, inputs=[*panel.inputs(), *settings, *lora_components], outputs=[panel.note],
                      api_visibility="private", show_progress="minimal", concurrency_limit=None)


def batch_size_text(images: Sequence[str] | None, prompts: str, seeds: str, seed_count: float | None) -> str:
    """How many jobs "Queue batch" will make, in words, or what keeps it from making any."""
    image_count = len(images or [])
    prompt_count = len(prompt_lines(prompts or "")) or 1
    try:
        seed_count_ = _seed_count(seeds, seed_count)
    except InvalidInputError as error:
        return f"⚠️ {html.escape(error.message, quote=False)}"
    if not image_count:
        return "Add start images: one job per image x prompt x seed."
    total = image_count * prompt_count * seed_count_
    words = (f"{image_count} image{'s' if image_count != 1 else ''} x {prompt_count} "
             f"prompt{'s' if prompt_count != 1 else ''} x {seed_count_} seed{'s' if seed_count_ != 1 else ''}")
    if total > MAX_BATCH_JOBS:
        return f"⚠️ {words} = {total} jobs; a batch makes at most {MAX_BATCH_JOBS}."
    return f"Will queue **{total} job{'s' if total != 1 else ''}**: {words}, with the settings above."


def plan_page_batch(images: Sequence[str] | None, prompts: str, seeds: str, seed_count: float | None,
                    values: dict[str, Any]) -> list[BatchJob]:
    """The batch's jobs from the panel and the form's ``values``; ``InvalidInputError`` names what is wrong."""
    paths = [Path(image) for image in images or []]
    if not paths:
        raise InvalidInputError("images", "the batch has no start image", "Add start images to the batch panel.")
    if len(paths) > MAX_PAGE_BATCH_IMAGES:
        raise InvalidInputError("images", f"the batch has {len(paths)} images; it takes at most "
                                f"{MAX_PAGE_BATCH_IMAGES}", "Split them into several batches.")
    base = build_request(str(paths[0]), values)
    seed_list: list[int] = []
    if (seeds or "").strip():
        seed_list = parse_seeds(seeds)
    elif seed_count:
        seed_list = seed_run(int(base.seed), int(seed_count))
    return expand_batch(base, paths, prompt_lines(prompts or ""), seed_list,
                        seed_field="seeds" if (seeds or "").strip() else "seed_count")


def queue_page_batch(context: PageContext, viewer: Viewer, images: Sequence[str] | None, prompts: str, seeds: str,
                     seed_count: float | None, values: dict[str, Any], lora_values: Sequence[Any] = ()) -> str:
    """Queue the panel's batch as ``viewer``: the note to show (what was queued, or what to fix). ``lora_values``:
    the LoRA panel's inputs (``LoraPanel.inputs()``), if any."""
    try:
        if lora_values:
            values = {**values, **lora_request_values(context.loras, *lora_inputs(lora_values))}
        jobs = plan_page_batch(images, prompts, seeds, seed_count, values)
        batch = queue_batch(context.service, jobs, viewer, context.settings.max_pending_per_user)
    except (FramePackError, RuntimeError) as error:
        message, hint = readable_error(error, None)
        for image in images or []:
            message = message.replace(str(image), Path(image).name)
        fix = f" How to fix: {html.escape(hint, quote=False)}" if hint else ""
        return f"**{html.escape(message, quote=False)}**{fix}"
    count = len(batch.job_ids)
    return (f"Queued **batch {batch.batch_id}**: {count} job{'s' if count != 1 else ''}. The Queue tab shows "
            "them as a group; pick one of them there and press Cancel batch to cancel them all.")


def _seed_count(seeds: str, seed_count: float | None) -> int:
    if (seeds or "").strip():
        return len(parse_seeds(seeds))
    return int(seed_count) if seed_count else 1
