"""The Gradio page: a thin view over ``GenerationService``, assembled from its parts.

Top to bottom: the title and the worker's health, the generate area (``generate_tab``), the Outputs tab
(``gallery_tab``), the Queue tab (``queue_tab``); and the named API endpoints (``endpoints``). Handlers only build
a ``GenerationRequest``, call the service and turn its ``JobSnapshot``s into component updates; the engine, the
queue and the files on disk belong to the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.api.status import JobStatuses
from app.service.generation import GenerationService
from app.service.outputs import ServedFiles
from app.settings import Settings
from app.ui.batch_panel import wire_batch_panel
from app.ui.context import PageContext
from app.ui.endpoints import build_endpoint_outputs, wire_endpoints
from app.ui.gallery_tab import build_gallery_tab, wire_gallery_tab
from app.ui.generate_tab import build_generate_tab, wire_generate_tab
from app.ui.lora_panel import wire_lora_panel
from app.ui.models_tab import build_models_tab, wire_models_tab
from app.ui.queue_tab import build_queue_tab, wire_queue_tab

# The page's pure pieces, re-exported: tests and scripts import them from here.
from app.ui.render import (  # noqa: F401
    JOB_FIELDS,
    build_request,
    readable_error,
    render_progress,
    settings_to_inputs,
    video_settings,
)
from app.ui.reroll_panel import wire_reroll
from app.ui.story_panel import wire_story_panel
from app.ui.streams import StreamFrame
from framepack_core.lora.library import LoraFolder

DEMO_BANNER = ("**demo mode: random tiny weights, the video is noise.** Everything else is real: the models are "
               "loaded, sampled, decoded and written exactly as with the real weights, on the CPU.")

CSS = """
#progress .fp-progress { font-size: 0.95rem; line-height: 1.5; overflow-wrap: anywhere; }
#progress progress { width: 100%; height: 0.8rem; }
/* The latent preview is tiny (1/8 of the video size): scale it up to the box, without smoothing. */
#preview img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#progress .fp-error { color: var(--error-text-color, #b91c1c); }
#progress .fp-muted { opacity: 0.75; }
#demo-banner { border: 2px solid #f59e0b; border-radius: 8px; padding: 0.2rem 0.8rem; }
/* The job's progress and video stay in view while the settings under Start scroll by. Gradio's container hides
   its overflow, which would make it the scroll box that a sticky element sticks to; clip cuts the same, without. */
.gradio-container { overflow: clip !important; }
#job-output { position: sticky; top: 0.5rem; align-self: flex-start; }
#image-check .fp-error { color: var(--error-text-color, #b91c1c); }
#estimate .fp-estimate { font-size: 0.9rem; line-height: 1.45; padding: 0 0.2rem; }
#estimate .fp-error { color: var(--error-text-color, #b91c1c); }
#image-check:not(:has(.fp-error)) { display: none; }  /* no gap under the image until there is something to say */
/* Headers break between words, never inside one ("sec/ond/s"). */
#queue-table th, #queue-table th * { overflow-wrap: normal; word-break: normal; hyphens: none; }
/* Buttons at the height of the boxes beside them, on their bottom edge. */
#queue-actions { align-items: flex-end; }
/* The Story panel's timeline: one compact row per section, its times on the left. */
.fp-section-row { align-items: center; border-top: 1px solid var(--border-color-primary); padding-top: 0.3rem; }
.fp-section-row > .prose { flex: 0 0 7rem !important; min-width: 7rem !important; }
/* The LoRA panel's head: its note, and Refresh at the note's height on the right. */
#lora-head { align-items: center; flex-wrap: nowrap; }
"""


def page_style() -> dict[str, Any]:
    """``theme`` and ``css`` for ``Blocks.launch`` (Gradio 6 takes them there, not in ``Blocks``).

    System fonts only: the default theme fetches Google Fonts, which an offline or firewalled machine cannot.
    """
    fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "monospace"]
    return {"theme": gr.themes.Default(font=fonts, font_mono=mono), "css": CSS}


def build_app(settings: Settings, service: GenerationService, served: ServedFiles | None = None,
              loras: LoraFolder | None = None) -> gr.Blocks:
    """The whole page and its API endpoints. The service must be started by the caller. ``served``: where output
    files are linked for Gradio to copy (``ServedFiles``; the caller closes it when the app stops). ``loras``: the
    LoRA folder, shared with the job API so each file is hashed once (default: the settings' folder)."""
    context = PageContext(settings=settings, service=service, served=served or ServedFiles(),
                          statuses=JobStatuses(service, Path(settings.output_dir)), loras=loras)

    with gr.Blocks(title="FramePack", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        shown_job = gr.State(None)  # the job this tab shows
        gallery_records = gr.State([])
        # This browser's own last job, so a reload reconnects to it even when it is only queued.
        browser_job = gr.BrowserState(None, storage_key="framepack-job")

        gr.Markdown("# FramePack image-to-video")
        # Filled after the page opens, like every piece of live data: nothing stored can break the page itself.
        health_note = gr.Markdown("", elem_id="worker-health")
        if settings.demo:
            gr.Markdown(DEMO_BANNER, elem_id="demo-banner")

        generate = build_generate_tab(context.defaults, context.loras, show_lora_path=not settings.logins_on)
        gallery = build_gallery_tab(gallery_records)
        queue = build_queue_tab(settings.logins_on)
        models = build_models_tab()
        endpoint_outputs = build_endpoint_outputs()

        stream_outputs = StreamFrame(shown_job=shown_job, browser_job=browser_job, preview=generate.preview,
                                     progress=generate.progress, video=generate.video,
                                     final_file=generate.final_file, start=generate.start, stop=generate.stop,
                                     gallery=gallery.gallery, gallery_records=gallery.records)
        stream_events = wire_generate_tab(demo, generate, stream_outputs, context)
        wire_story_panel(generate.story, generate.form)
        wire_lora_panel(demo, generate.lora, context.loras, show_path=not settings.logins_on)
        wire_reroll(generate.story, stream_outputs, context, shown_jobs=[shown_job, queue.job],
                    after_streams=stream_events)
        wire_batch_panel(generate.batch, generate.form.settings(), context, generate.lora)
        wire_gallery_tab(gallery, generate, context)
        wire_queue_tab(demo, queue, health_note, stream_outputs, context)
        wire_models_tab(demo, models, context)
        wire_endpoints(endpoint_outputs, generate.form, context)

    return demo
