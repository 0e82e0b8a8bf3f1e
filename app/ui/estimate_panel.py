"""The estimate under Start: the job's peak VRAM and RAM from the memory plan and its run time, for the settings
in the form, updated as they change and after each job (the run time is learned from this machine's jobs).

The numbers come from the core's ``estimate_job`` (as the job itself plans and times); this module only turns
the form into a request and the estimate into HTML. Nothing is loaded: a handler takes milliseconds.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from typing import Any

import gradio as gr
from gradio.components import Component

from app.ui.context import PageContext
from app.ui.lora import lora_request_values
from app.ui.lora_panel import lora_inputs
from app.ui.render import JOB_FIELDS, build_request, page_field_name, readable_error, upload_path
from framepack_core.errors import FramePackError
from framepack_core.pipeline.estimate import JobEstimate, estimate_job, image_size_of

logger = logging.getLogger(__name__)

# The settings that change the plan or the time; the others (prompt, seed, CRF...) cost nothing to change.
ESTIMATE_INPUTS = ("model", "seconds", "steps", "latent_window_size", "cfg", "cache", "resolution",
                   "gpu_memory_preservation", "fp8")
# Before an image is chosen the request still needs one; it is never opened (the plan then holds for any image).
NO_IMAGE = "no start image yet"
FIRST_TEXT = "Estimate: working it out ..."


def build_estimate_panel() -> gr.HTML:
    """The panel, laid out in the current Blocks (under the Start button)."""
    return gr.HTML(_wrap(html.escape(FIRST_TEXT), "unknown"), elem_id="estimate")


def wire_estimate_panel(demo: gr.Blocks, panel: gr.HTML, form_inputs: list[Component], context: PageContext,
                        after: list[Any], lora_panel_inputs: Sequence[Component] = ()) -> None:
    """Recompute on page load, when the image, a setting that matters or a LoRA changes, and after each event in
    ``after`` (a job's stream ending: the machine has learned its speed). ``form_inputs``: the image, then the
    settings in ``JOB_FIELDS`` order; ``lora_panel_inputs``: the LoRA panel's (``LoraPanel.inputs()``), whose
    adapters the transformer holds during the job."""

    def refresh(image: Any, *settings: Any) -> str:
        values = dict(zip(JOB_FIELDS, settings[:len(JOB_FIELDS)], strict=True))
        return estimate_panel_html(context, upload_path(image), values, settings[len(JOB_FIELDS):])

    # Unprocessed like Start: the image is only read for its size, never decoded by Gradio first.
    # One at a time: the first estimate of a model reads its sizes (seconds from the built-in configs when no
    # weights are downloaded yet), and two at once would only do that twice.
    options = {"fn": refresh, "inputs": [*form_inputs, *lora_panel_inputs], "outputs": [panel], "api_visibility": "private",
               "show_progress": "hidden", "preprocess": False, "concurrency_id": "estimate", "concurrency_limit": 1}
    demo.load(**options)
    image, settings = form_inputs[0], dict(zip(JOB_FIELDS, form_inputs[1:], strict=True))
    # A dragged slider sends many changes: only the last one waiting is computed.
    for component in (image, *(settings[name] for name in ESTIMATE_INPUTS), *lora_panel_inputs):
        component.change(trigger_mode="always_last", **options)
    for event in after:
        event.then(**options)


def estimate_panel_html(context: PageContext, image: str | None, values: dict[str, Any],
                        lora_panel_values: Sequence[Any] = ()) -> str:
    """The panel for the form's ``image`` (a path, or None), settings ``values`` and the LoRA panel's values
    (``LoraPanel.inputs()``' order; none: no LoRA)."""
    try:
        if lora_panel_values:
            values = {**values, **lora_request_values(context.loras, *lora_inputs(lora_panel_values))}
        request = build_request(image or NO_IMAGE, values).validated()
        engine = context.service.engine()
        # A LoRA is read (once per file) to count its adapters: a foreign or broken file is refused here.
        estimate = estimate_job(request, image_size_of(image), engine.models, engine.planner, engine.timings)
    except FramePackError as error:
        message, hint = readable_error(error, image)
        field = getattr(error, "field", "")
        if message.startswith(f"{field}: ") and page_field_name(field):  # the control's label, not the field
            message = f"{page_field_name(field)}{message.removeprefix(field)}"
        text = f"Estimate: {message}" + (f" How to fix: {hint}" if hint else "")
        return _wrap(f'<span class="fp-muted">{html.escape(text)}</span>', "invalid")
    except Exception:  # an estimate is a courtesy: the form stays usable whatever went wrong
        logger.exception("Could not estimate the job")
        return _wrap('<span class="fp-muted">Estimate unavailable (the app\'s log says why).</span>', "error")
    return render_estimate(estimate, image_chosen=bool(image))


def render_estimate(estimate: JobEstimate, *, image_chosen: bool) -> str:
    """The estimate as the panel's HTML: what it is for, memory, time, then any warnings."""
    height, width = estimate.bucket
    sections = f"{estimate.sections} section{'s' if estimate.sections != 1 else ''}"
    subject = (f"a {width}×{height} video in {sections}" if image_chosen
               else f"any start image (the largest size, {width}×{height}), {sections}")
    lines = [f"<b>Estimate</b> for {html.escape(subject)}"]
    if estimate.fits is not None:
        verdict = "fits" if estimate.fits else "may not fit"
        where = f" on {estimate.device_name}" if estimate.device_type != "cpu" else ""
        lines.append(f'<span class="fp-estimate-memory">Memory ({html.escape(verdict + where)}): '
                     f"{html.escape(estimate.memory_text())}</span>")
    lines.append(f'<span class="fp-estimate-time">Time: {html.escape(estimate.time_text())}</span>')
    lines += [f'<span class="fp-error">⚠ {html.escape(warning)}</span>' for warning in estimate.warnings]
    return _wrap("<br>".join(lines), estimate.source, estimate.fits)


def _wrap(body: str, source: str, fits: bool | None = None) -> str:
    """The outer element carries the time's source (a ``TimeSource``, or "invalid" / "error") and the fit, for
    tests and scripts."""
    fit = "" if fits is None else f' data-fits="{str(fits).lower()}"'
    return f'<div class="fp-estimate" data-source="{html.escape(source)}"{fit}>{body}</div>'
