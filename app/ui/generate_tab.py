"""The generate area at the top of the page: the job form with Start, Stop and Free memory, and the job's live
progress, latent preview and video.

Progress is streamed by generator handlers that block in ``service.wait_for_change`` (no busy polling) and yield
only what changed, so a page never blocks another and a job outlives the tab that started it: reloading the page
reconnects to it.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from app.access import Viewer
from app.settings import REPO_ROOT
from app.ui.batch_panel import BatchPanel, build_batch_panel
from app.ui.context import PageContext
from app.ui.estimate_panel import build_estimate_panel, wire_estimate_panel
from app.ui.lora import lora_request_values
from app.ui.lora_panel import LoraPanel, build_lora_panel, lora_inputs
from app.ui.render import (
    FIELD_LABELS,
    FP8_CHOICE_OF,
    FP8_CHOICES,
    JOB_FIELDS,
    readable_error,
    render_image_check,
    render_message,
    settings_to_inputs,
    slider_threshold,
    takes_threshold,
    upload_path,
)
from app.ui.story import story_request_values, story_settings_to_inputs
from app.ui.story_panel import StoryPanel, build_story_panel, story_inputs
from app.ui.streams import StreamFrame, first_frame, idle_frame, next_frame, snapshots_to_show
from framepack_core.errors import FramePackError, InvalidInputError
from framepack_core.lora.library import LoraFolder
from framepack_core.media.image_input import load_input_image
from framepack_core.request import MAX_RESOLUTION, MAX_SECONDS, MAX_WINDOW, MIN_RESOLUTION
from framepack_core.sampling.cache_methods import DEFAULT_CACHE_THRESHOLDS, CacheMethod

logger = logging.getLogger(__name__)

EXAMPLE_PROMPTS = (
    "The girl dances gracefully, with clear movements, full of charm.",
    "A character doing some simple body movements.",
)
EXAMPLE_IMAGES = tuple(REPO_ROOT / "assets" / name
                       for name in ("chelsea_landscape.jpg", "astronaut_portrait.jpg", "coffee_landscape.jpg"))
ORIGINAL_NOTE = ("**The original model generates the end of the clip first**: each new section lies *before* the "
                 "previous one, so the video below grows towards the start image. F1 generates forward.")
MEMORY_INFO = ("VRAM left free for other programs. Empty: chosen for you. More preserved means more of the model "
               "is offloaded to RAM: slower, never different.")
# Seeds are drawn below 2**32 so they survive the browser's float64 numbers exactly.
RANDOM_SEED_LIMIT = 2**32
CACHE_CHOICES = [("TeaCache (the official app's)", CacheMethod.TEACACHE.value),
                 ("None (full model, final quality)", CacheMethod.NONE.value),
                 ("First-block cache", CacheMethod.FIRST_BLOCK.value), ("MagCache", CacheMethod.MAGCACHE.value),
                 ("TaylorSeer", CacheMethod.TAYLORSEER.value)]
# Progress and previews are redrawn at most this often (sections, state changes and the end go out at once).
PAGE_UPDATE_INTERVAL_S = 0.2
# A stream that has nothing new redraws its job this often anyway, so a page that something else drew over (a
# frame of the stream it replaced, still in flight) shows its own job again within this time.
PAGE_REDRAW_INTERVAL_S = 2.0


@dataclass
class JobForm:
    """The inputs of a job: the start image, then one component per ``JOB_FIELDS`` name."""

    image: gr.Image
    prompt: gr.Textbox
    model: gr.Radio
    seconds: gr.Slider
    seed: gr.Number
    steps: gr.Slider
    distilled_guidance: gr.Slider
    latent_window_size: gr.Slider
    cfg: gr.Slider
    cfg_rescale: gr.Slider
    negative_prompt: gr.Textbox
    cache: gr.Dropdown
    cache_threshold: gr.Slider
    crf: gr.Slider
    resolution: gr.Slider
    gpu_memory_preservation: gr.Number
    fp8: gr.Dropdown

    def inputs(self) -> list[Component]:
        """The image, then the settings in ``JOB_FIELDS`` order: how every job handler takes them."""
        return [self.image, *(getattr(self, name) for name in JOB_FIELDS)]

    def settings(self) -> list[Component]:
        """The settings in ``JOB_FIELDS`` order, without the image (what loading saved settings fills in)."""
        return self.inputs()[1:]


@dataclass
class GenerateTab:
    form: JobForm
    image_check: gr.HTML  # what is wrong with a dropped file, said as soon as it is dropped
    quick_prompts: gr.Dataset
    model_note: gr.Markdown
    start: gr.Button
    stop: gr.Button
    free_memory: gr.Button
    random_seed: gr.Button
    preview: gr.Image
    video: gr.Video
    progress: gr.HTML
    final_file: gr.File
    estimate: gr.HTML  # the job's memory and time, under Start (estimate_panel)
    story: StoryPanel
    lora: LoraPanel
    batch: BatchPanel | None = None  # several images, prompts and seeds at once (``batch_panel``)


def build_generate_tab(defaults: dict[str, Any], loras: LoraFolder, *, show_lora_path: bool = True) -> GenerateTab:
    """The form (left) and the job's progress, preview and video (right), laid out in the current Blocks.

    What a new user needs (the image, the prompt, Start, and where the video appears) fits in a 1366x768 window
    without scrolling; the settings follow under Start, and the examples wait in a closed accordion. The right
    column stays in view while the left one scrolls (``CSS`` in page.py).
    """
    with gr.Row(elem_id="generate-area"):
        with gr.Column(scale=1, elem_id="job-form"):
            image = gr.Image(label="Start image", type="filepath", image_mode=None,
                             sources=["upload", "clipboard"], height=260, elem_id="start-image")
            image_check = gr.HTML("", elem_id="image-check")
            prompt = gr.Textbox(label="Prompt", value=defaults["prompt"], lines=2, max_lines=6, elem_id="prompt",
                                placeholder="Describe the motion: the subject, then what it does.")
            with gr.Row(elem_id="job-buttons"):
                start_btn = gr.Button("Start", variant="primary", elem_id="start")
                stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
                # Unloads the models from RAM and VRAM; the next job loads them again.
                free_btn = gr.Button("Free memory", elem_id="free-memory")
            estimate = build_estimate_panel()
            seconds = gr.Slider(1, MAX_SECONDS, value=defaults["seconds"], step=0.1,
                                label=FIELD_LABELS["seconds"], elem_id="seconds")
            model = gr.Radio([("Original (inverted anti-drifting)", "original"), ("F1 (forward)", "f1")],
                             value=defaults["model"].value, label="Model", elem_id="model")
            model_note = gr.Markdown(ORIGINAL_NOTE, visible=defaults["model"].value == "original",
                                     elem_id="model-note")
            with gr.Row(equal_height=True):
                seed = gr.Number(value=defaults["seed"], precision=0, label="Seed", minimum=0, scale=3,
                                 elem_id="seed")
                random_seed_btn = gr.Button("Random seed", size="sm", scale=1, min_width=100, elem_id="random-seed")
            steps = gr.Slider(1, 100, value=defaults["steps"], step=1, label="Steps",
                              info="25 is the official default; changing it is not recommended.",
                              elem_id="steps")
            distilled_guidance = gr.Slider(1, 32, value=defaults["distilled_guidance"], step=0.01,
                                           label="Distilled CFG scale",
                                           info="10 is the official default; changing it is not recommended.",
                                           elem_id="distilled-guidance")
            story = build_story_panel(defaults)
            lora = build_lora_panel(loras, show_path=show_lora_path)
            with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                latent_window_size = gr.Slider(1, MAX_WINDOW, value=defaults["latent_window_size"], step=1,
                                               label=FIELD_LABELS["latent_window_size"],
                                               info="9 is what the models were trained with.",
                                               elem_id="window")
                cfg = gr.Slider(1, 32, value=defaults["cfg"], step=0.01, label="Real CFG scale",
                                info="1 turns it off. Above 1 the model runs twice per step and the "
                                     "negative prompt is used.", elem_id="cfg")
                cfg_rescale = gr.Slider(0, 1, value=defaults["cfg_rescale"], step=0.01, label="CFG rescale",
                                        elem_id="cfg-rescale")
                negative_prompt = gr.Textbox(label="Negative prompt", value=defaults["negative_prompt"],
                                             info="Used only when the real CFG scale is above 1.",
                                             elem_id="negative-prompt")
                cache = gr.Dropdown(CACHE_CHOICES, value=CacheMethod(defaults["cache"]).value,
                                    label=FIELD_LABELS["cache"],
                                    info="Skips model work between steps: faster, but often makes hands and "
                                         "fingers slightly worse. None gives the final quality.", elem_id="cache")
                cache_threshold = gr.Slider(0.01, 1.0, value=slider_threshold(defaults["cache"], defaults.get("cache_threshold")), step=0.01,
                                            visible=takes_threshold(defaults["cache"]),
                                            label=FIELD_LABELS["cache_threshold"],
                                            info="Higher is faster and drifts more; TeaCache's usual value is 0.15. "
                                                 "TaylorSeer takes none.", elem_id="cache-threshold")
                crf = gr.Slider(0, 51, value=defaults["crf"], step=1, label="MP4 compression (CRF)",
                                info="Lower means better quality; 0 is lossless but some players show it "
                                     "black. 16 is the default.", elem_id="crf")
                resolution = gr.Slider(MIN_RESOLUTION, MAX_RESOLUTION, value=defaults["resolution"], step=16,
                                       label=FIELD_LABELS["resolution"],
                                       info="640 is the official size; smaller is faster.",
                                       elem_id="resolution")
                gpu_memory_preservation = gr.Number(value=defaults.get("gpu_memory_preservation"),
                                                    minimum=0, maximum=1024, step=0.5,
                                                    label=FIELD_LABELS["gpu_memory_preservation"], info=MEMORY_INFO,
                                                    elem_id="preserved-memory")
                fp8 = gr.Dropdown(FP8_CHOICES, value=FP8_CHOICE_OF[defaults.get("fp8")],
                                  label=FIELD_LABELS["fp8"],
                                  info="Halves the transformer's memory; results differ slightly from bf16.",
                                  elem_id="fp8")
            batch = build_batch_panel()
            with gr.Accordion("Examples: start images and prompts", open=False, elem_id="examples"):
                gr.Examples([[str(p)] for p in EXAMPLE_IMAGES if p.is_file()], inputs=[image],
                            label="Example images", api_visibility="private")
                quick = gr.Dataset(label="Quick prompts", samples=[[p] for p in EXAMPLE_PROMPTS],
                                   components=[prompt], elem_id="quick-prompts")

        with gr.Column(scale=1, elem_id="job-output"):
            progress = gr.HTML(render_message("Upload an image, write a prompt and press Start."),
                               elem_id="progress")
            with gr.Row(elem_id="job-media"):
                # A short label and one button: at 1366 px the column is about 190 px wide, and Gradio's
                # buttons lie over the label's right end (sharing or downloading a latent preview is of no use).
                preview = gr.Image(label="Latent preview", interactive=False, visible=False, buttons=["fullscreen"],
                                   height=240, format="png", scale=1, min_width=160, elem_id="preview")
                video = gr.Video(label="Video so far (a new section appears as soon as it is written)",
                                 autoplay=True, loop=False, height=400, interactive=False, buttons=["download"],
                                 scale=2, elem_id="video")
            final_file = gr.File(label="Final video", interactive=False, elem_id="final-file")

    form = JobForm(image=image, prompt=prompt, model=model, seconds=seconds, seed=seed, steps=steps,
                   distilled_guidance=distilled_guidance, latent_window_size=latent_window_size, cfg=cfg,
                   cfg_rescale=cfg_rescale, negative_prompt=negative_prompt, cache=cache,
                   cache_threshold=cache_threshold, crf=crf, resolution=resolution,
                   gpu_memory_preservation=gpu_memory_preservation, fp8=fp8)
    return GenerateTab(form=form, image_check=image_check, quick_prompts=quick, model_note=model_note,
                       start=start_btn, stop=stop_btn, free_memory=free_btn, random_seed=random_seed_btn,
                       preview=preview, video=video, progress=progress, final_file=final_file, estimate=estimate,
                       story=story, lora=lora, batch=batch)


def wire_generate_tab(demo: gr.Blocks, tab: GenerateTab, outputs: StreamFrame[Component],
                      context: PageContext) -> list[Any]:
    """Start, Stop, Free memory, the page-load reconnection (the job's progress, and its inputs back in the form),
    the check of a dropped image, and the small input helpers. ``outputs``: what a job's stream draws
    (``outputs.shown_job`` is the job this tab's Stop stops, ``outputs.browser_job`` the browser's own last job).
    Returns the stream events (page load, Start), after which the shown job may have ended."""
    service = context.service
    form_inputs = tab.form.inputs()

    def on_start(request: gr.Request, image: dict[str, Any] | None, *settings: Any) -> Iterator[list[Any]]:
        # The request comes first: Gradio passes it only to a parameter before the *settings.
        session = request.session_hash or ""
        viewer = context.viewer_of(request)
        token = context.streams.begin(session)  # from here on, the page-load stream draws nothing more
        path = upload_path(image)
        values = dict(zip(JOB_FIELDS, settings[:len(JOB_FIELDS)], strict=True))
        story_end = len(JOB_FIELDS) + len(tab.story.inputs())
        values.update(story_request_values(story_inputs(settings[len(JOB_FIELDS):story_end]), values))
        try:
            values.update(lora_request_values(context.loras, *lora_inputs(settings[story_end:])))
            job_id, repeated = context.submit_once(session, path, values, viewer)
        except (FramePackError, RuntimeError) as error:
            # A refused request is the user's to fix: say what and how, in the page, and stay ready.
            message, hint = readable_error(error, path)
            gr.Warning(f"{message} How to fix: {hint}" if hint else message)
            yield idle_frame(message, hint=hint, error=True).values()
            context.streams.end(session, token)
            return
        if repeated:
            logger.info("A repeated Start follows job %s instead of queueing a copy", job_id)
        else:
            logger.info("Job %s submitted from the page", job_id)
        yield from _stream(context, job_id, session, token, viewer, own=True)

    def on_load(own_job: str | None, request: gr.Request) -> Iterator[list[Any]]:
        """On page load: follow this browser's unfinished job, else the running one, else show the last."""
        session = request.session_hash or ""
        viewer = context.viewer_of(request)
        token = context.streams.begin(session)
        # The browser's stored job id is only a hint: a job the viewer may not see is as good as unknown.
        own_alive = own_job is not None and _is_alive(context, own_job, viewer)
        job_id = own_job if own_alive else service.active_job_id(viewer)
        if job_id is None and own_job is not None and _is_known(context, own_job, viewer):
            job_id = own_job  # finished while the page was away: show its result
        if job_id is None:
            frame = idle_frame()
            frame.gallery, frame.gallery_records = context.past_generations(viewer)
            yield frame.values() if context.streams.is_current(session, token) else _nothing_new()
            context.streams.end(session, token)
            return
        yield from _stream(context, job_id, session, token, viewer, own=job_id == own_job, with_gallery=True)

    def restore_form(own_job: str | None, request: gr.Request) -> list[Any]:
        """On page load, the inputs of this browser's unfinished job back in the form and the Story panel, so the
        page shows what is running; a finished or unknown job leaves them as they are."""
        viewer = context.viewer_of(request)
        try:
            snapshot = service.snapshot(own_job, viewer) if own_job else None
        except KeyError:
            snapshot = None
        if snapshot is None or snapshot.state.done:
            return [gr.skip()] * len(restored)
        job = snapshot.request
        image = context.served.serve(job.image)
        end_image = context.served.serve(job.end_image) if job.end_image is not None else None
        return [image or gr.skip(), *settings_to_inputs(job.to_dict(), context.defaults),
                *story_settings_to_inputs(job.to_dict()), end_image or gr.skip()]

    def on_stop(job_id: str | None, request: gr.Request) -> None:
        if job_id is not None and service.cancel(job_id, context.viewer_of(request)):
            logger.info("Stop requested for job %s", job_id)

    def on_free_memory() -> None:
        gr.Info(service.free_memory())

    stream_outputs = outputs.values()
    load_event = demo.load(on_load, inputs=[outputs.browser_job], outputs=stream_outputs, show_progress="hidden",
                           api_visibility="private", concurrency_id="stream")
    restored = [*form_inputs, *tab.story.settings(), tab.story.end_image]
    demo.load(restore_form, inputs=[outputs.browser_job], outputs=restored, show_progress="hidden",
              api_visibility="private", queue=False)
    # Start is disabled at once, before the job is even submitted, so a second click has nothing to press; one
    # that still gets through (a double click) follows the first job (PageContext.submit_once).
    # preprocess=False: the handlers get the upload as Gradio stored it, unopened (see upload_path).
    started = tab.start.click(lambda: gr.update(interactive=False), outputs=[tab.start], api_visibility="private",
                              queue=False, show_progress="hidden").then(
        on_start, inputs=form_inputs + tab.story.inputs() + tab.lora.inputs(), outputs=stream_outputs, show_progress="hidden",
        api_visibility="private",
        concurrency_id="stream", cancels=[load_event], preprocess=False, trigger_mode="multiple")
    # A job that ends has taught the machine its speed: the estimate follows.
    wire_estimate_panel(demo, tab.estimate, form_inputs, context, after=[started, load_event],
                        lora_panel_inputs=tab.lora.inputs())
    tab.stop.click(on_stop, inputs=[outputs.shown_job], outputs=None, api_visibility="private",
                   concurrency_limit=None, show_progress="hidden")
    tab.free_memory.click(on_free_memory, outputs=None, api_visibility="private", concurrency_limit=None,
                          show_progress="hidden")

    # Small input helpers
    tab.form.image.upload(check_dropped_image, inputs=[tab.form.image], outputs=[tab.form.image, tab.image_check],
                          api_visibility="private", show_progress="hidden", preprocess=False)
    tab.form.image.clear(lambda: "", outputs=[tab.image_check], api_visibility="private", show_progress="hidden",
                         queue=False)
    tab.quick_prompts.click(lambda sample: sample[0], inputs=[tab.quick_prompts], outputs=[tab.form.prompt],
                            api_visibility="private", show_progress="hidden", concurrency_limit=None)
    tab.form.model.change(lambda choice: gr.update(visible=choice == "original"), inputs=[tab.form.model],
                          outputs=[tab.model_note], api_visibility="private", show_progress="hidden",
                          concurrency_limit=None)
    # Choosing a cache sets its own default threshold (``input``: a user's choice only, so settings loaded from a
    # video keep their threshold); the slider shows only for a method that takes one, however the method was set.
    tab.form.cache.input(cache_threshold_update, inputs=[tab.form.cache], outputs=[tab.form.cache_threshold],
                         api_visibility="private", show_progress="hidden", concurrency_limit=None)
    tab.form.cache.change(lambda method: gr.update(visible=takes_threshold(method)), inputs=[tab.form.cache],
                          outputs=[tab.form.cache_threshold], api_visibility="private", show_progress="hidden",
                          concurrency_limit=None)
    tab.random_seed.click(lambda: random.randrange(RANDOM_SEED_LIMIT), outputs=[tab.form.seed],
                          api_visibility="private", show_progress="hidden", concurrency_limit=None)
    return [load_event, started]


def check_dropped_image(image: dict[str, Any] | str | None) -> tuple[Any, str]:
    """The job's own image check (``load_input_image``), run as soon as a file is dropped: a file that is not an
    image, or is too small or too large, is taken out of the box (no broken picture left behind) and the note
    under it says what was wrong and how to fix it. Returns the image box's update and the note."""
    path = upload_path(image)
    if path is None:
        return gr.skip(), ""
    try:
        load_input_image(path)
    except InvalidInputError as error:
        message, hint = readable_error(error, path)
        gr.Warning(f"{message} How to fix: {hint}" if hint else message)
        return gr.update(value=None), render_image_check(message, hint)
    return gr.skip(), ""


def follow_job(context: PageContext, job_id: str | None, own_job: str | None, request: gr.Request
               ) -> Iterator[list[Any]]:
    """Show a waiting or running job that the user picked (in the Queue tab) in the generate area, as Start
    does for a new job. A job that has ended, is unknown or hidden from the viewer leaves the page as it is."""
    job_id = str(job_id or "").strip()
    viewer = context.viewer_of(request)
    if not job_id or not _is_alive(context, job_id, viewer):
        yield _nothing_new()
        return
    session = request.session_hash or ""
    token = context.streams.begin(session)
    yield from _stream(context, job_id, session, token, viewer, own=job_id == own_job)


def _stream(context: PageContext, job_id: str, session: str, token: int, viewer: Viewer, *, own: bool,
            with_gallery: bool = False) -> Iterator[list[Any]]:
    """Yield page updates for ``job_id`` until it ends, or until the session follows a newer stream; each output
    only when it changed."""
    streams, served = context.streams, context.served
    try:
        updates = snapshots_to_show(context.service, job_id, PAGE_UPDATE_INTERVAL_S, PAGE_REDRAW_INTERVAL_S, viewer)
        snapshot = next(updates)
        one_at_a_time = context.service.worker_count == 1
        frame = first_frame(snapshot, own, served, one_at_a_time)
        if with_gallery:
            frame.gallery, frame.gallery_records = context.past_generations(viewer)
        if not streams.is_current(session, token):
            yield _nothing_new()
            return
        yield frame.values()
        for previous, latest in itertools.pairwise(itertools.chain([snapshot], updates)):
            frame = next_frame(previous, latest, own, served, one_at_a_time)
            if latest.state.done:
                frame.gallery, frame.gallery_records = context.past_generations(viewer)
            if not streams.is_current(session, token):
                return
            yield frame.values()
    except KeyError:  # a long-finished job the service has forgotten
        yield idle_frame("That job is no longer known to the app; see the outputs gallery.").values() \
            if streams.is_current(session, token) else _nothing_new()
    finally:
        streams.end(session, token)


def _nothing_new() -> list[Any]:
    """What a stream yields when it has nothing to draw. A frame is still due: Gradio sets every output of a
    generator that yields nothing to None, which blanks the page (the progress, even Start's label)."""
    return StreamFrame().values()


def _is_alive(context: PageContext, job_id: str, viewer: Viewer) -> bool:
    try:
        return not context.service.snapshot(job_id, viewer).state.done
    except KeyError:
        return False


def _is_known(context: PageContext, job_id: str, viewer: Viewer) -> bool:
    try:
        context.service.snapshot(job_id, viewer)
        return True
    except KeyError:
        return False


def cache_threshold_update(method: str) -> dict[str, Any]:
    """The threshold slider for a newly chosen cache ``method``: at the method's default, hidden for none and
    TaylorSeer (they take no threshold)."""
    threshold = DEFAULT_CACHE_THRESHOLDS[CacheMethod(method)]
    if threshold is None:
        return gr.update(visible=False)
    return gr.update(visible=True, value=threshold)
