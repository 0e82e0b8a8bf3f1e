"""The Gradio page: a thin view over ``GenerationService``.

Handlers only build a ``GenerationRequest``, call the service and turn its ``JobSnapshot``s into component
updates; the engine, the queue and the files on disk belong to the service. Progress is streamed by generator
handlers that block in ``service.wait_for_change`` (no busy polling) and yield only what changed, so a page
never blocks another and a job outlives the tab that started it: reloading the page reconnects to it.

Named API endpoints (for ``gradio_client``): ``/generate`` (image + settings in, final video out, progress as
it goes), ``/status`` and ``/stop`` (by job id).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from app.access import Viewer
from app.service.generation import GenerationService, JobState
from app.service.outputs import ServedFiles
from app.settings import REPO_ROOT, Settings

# The page's pure pieces (some re-exported: tests and scripts import them from here) and its streams.
from app.ui.render import (  # noqa: F401
    FP8_CHOICE_OF,
    FP8_CHOICES,
    JOB_FIELDS,
    JOB_ID_PATTERN,
    QUEUE_COLUMNS,
    QUEUE_REFRESH_S,
    api_text,
    build_request,
    gallery_items,
    health_markdown,
    queue_table_rows,
    readable_error,
    render_message,
    render_progress,
    settings_to_inputs,
    status_dict,
    upload_path,
    video_settings,
)
from app.ui.streams import LatestStreams, first_frame, idle_frame, next_frame, snapshots_to_show
from framepack_core.errors import FramePackError, InvalidInputError
from framepack_core.request import MAX_RESOLUTION, MAX_SECONDS, MAX_WINDOW, MIN_RESOLUTION

logger = logging.getLogger(__name__)

EXAMPLE_PROMPTS = (
    "The girl dances gracefully, with clear movements, full of charm.",
    "A character doing some simple body movements.",
)
EXAMPLE_IMAGES = tuple(REPO_ROOT / "assets" / name
                       for name in ("chelsea_landscape.jpg", "astronaut_portrait.jpg", "coffee_landscape.jpg"))
ORIGINAL_NOTE = ("**The original model generates the end of the clip first**: each new section lies *before* the "
                 "previous one, so the video below grows towards the start image. F1 generates forward.")
DEMO_BANNER = ("**demo mode: random tiny weights, the video is noise.** Everything else is real: the models are "
               "loaded, sampled, decoded and written exactly as with the real weights, on the CPU.")
MEMORY_INFO = ("VRAM left free for other programs. Empty: chosen for you. More preserved means more of the model "
               "is offloaded to RAM: slower, never different.")
# Seeds are drawn below 2**32 so they survive the browser's float64 numbers exactly.
RANDOM_SEED_LIMIT = 2**32
# Progress and previews are redrawn at most this often (sections, state changes and the end go out at once).
PAGE_UPDATE_INTERVAL_S = 0.2
API_UPDATE_INTERVAL_S = 0.5
# A stream that has nothing new redraws its job this often anyway, so a page that something else drew over (a
# frame of the stream it replaced, still in flight) shows its own job again within this time.
PAGE_REDRAW_INTERVAL_S = 2.0

CSS = """
#progress .fp-progress { font-size: 0.95rem; line-height: 1.5; overflow-wrap: anywhere; }
#progress progress { width: 100%; height: 0.8rem; }
/* The latent preview is tiny (1/8 of the video size): scale it up to the box, without smoothing. */
#preview img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#progress .fp-error { color: var(--error-text-color, #b91c1c); }
#progress .fp-muted { opacity: 0.75; }
#demo-banner { border: 2px solid #f59e0b; border-radius: 8px; padding: 0.2rem 0.8rem; }
"""


def page_style() -> dict[str, Any]:
    """``theme`` and ``css`` for ``Blocks.launch`` (Gradio 6 takes them there, not in ``Blocks``).

    System fonts only: the default theme fetches Google Fonts, which an offline or firewalled machine cannot.
    """
    fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "monospace"]
    return {"theme": gr.themes.Default(font=fonts, font_mono=mono), "css": CSS}


# The page ------------------------------------------------------------------------------------------------------

def build_app(settings: Settings, service: GenerationService, served: ServedFiles | None = None) -> gr.Blocks:
    """The whole page and its API endpoints. The service must be started by the caller. ``served``: where output
    files are linked for Gradio to copy (``ServedFiles``; the caller closes it when the app stops)."""
    defaults = settings.job_defaults()
    served = served or ServedFiles()  # how output files reach a browser: see ServedFiles and docs/security.md
    latest_streams = LatestStreams()

    def viewer_of(request: gr.Request | None) -> Viewer:
        """Who is asking: with logins on, a request without a login sees nothing."""
        login = getattr(request, "username", None) if request is not None else None
        return Viewer.of(login, logins_on=settings.logins_on, admins=settings.admins)

    with gr.Blocks(title="FramePack", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        job_state = gr.State(None)  # the job this tab shows
        records_state = gr.State([])  # the gallery's records, to map a click to its settings
        # This browser's own last job, so a reload reconnects to it even when it is only queued.
        browser_job = gr.BrowserState(None, storage_key="framepack-job")

        gr.Markdown("# FramePack image-to-video")
        # Filled after the page opens, like every piece of live data: nothing stored can break the page itself.
        health_note = gr.Markdown("", elem_id="worker-health")
        if settings.demo:
            gr.Markdown(DEMO_BANNER, elem_id="demo-banner")

        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Start image", type="filepath", image_mode=None,
                                    sources=["upload", "clipboard"], height=320, elem_id="start-image")
                gr.Examples([[str(p)] for p in EXAMPLE_IMAGES if p.is_file()], inputs=[image],
                            label="Example images", api_visibility="private")
                prompt = gr.Textbox(label="Prompt", value=defaults["prompt"], lines=2, elem_id="prompt",
                                    placeholder="Describe the motion: the subject, then what it does.")
                quick = gr.Dataset(label="Quick prompts", samples=[[p] for p in EXAMPLE_PROMPTS],
                                   components=[prompt], elem_id="quick-prompts")
                model = gr.Radio([("Original (inverted anti-drifting)", "original"), ("F1 (forward)", "f1")],
                                 value=defaults["model"].value, label="Model", elem_id="model")
                model_note = gr.Markdown(ORIGINAL_NOTE, visible=defaults["model"].value == "original",
                                         elem_id="model-note")
                with gr.Row():
                    start_btn = gr.Button("Start", variant="primary", elem_id="start")
                    stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
                    # Unloads the models from RAM and VRAM; the next job loads them again.
                    free_btn = gr.Button("Free memory", elem_id="free-memory")
                seconds = gr.Slider(1, MAX_SECONDS, value=defaults["seconds"], step=0.1,
                                    label="Video length (seconds)", elem_id="seconds")
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
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    latent_window_size = gr.Slider(1, MAX_WINDOW, value=defaults["latent_window_size"], step=1,
                                                   label="Latent window size",
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
                    use_teacache = gr.Checkbox(value=defaults["use_teacache"], label="Use TeaCache",
                                               info="Faster, but often makes hands and fingers slightly worse. "
                                                    "Turn it off for the final quality.", elem_id="teacache")
                    teacache_threshold = gr.Slider(0.01, 1.0, value=defaults["teacache_threshold"], step=0.01,
                                                   label="TeaCache threshold",
                                                   info="0.15 is the usual value; lower is closer to no cache.",
                                                   elem_id="teacache-threshold")
                    crf = gr.Slider(0, 51, value=defaults["crf"], step=1, label="MP4 compression (CRF)",
                                    info="Lower means better quality; 0 is lossless but some players show it "
                                         "black. 16 is the default.", elem_id="crf")
                    resolution = gr.Slider(MIN_RESOLUTION, MAX_RESOLUTION, value=defaults["resolution"], step=16,
                                           label="Base resolution",
                                           info="640 is the official size; smaller is faster.",
                                           elem_id="resolution")
                    gpu_memory_preservation = gr.Number(value=defaults.get("gpu_memory_preservation"),
                                                        minimum=0, maximum=1024, step=0.5,
                                                        label="GPU memory to preserve (GB)", info=MEMORY_INFO,
                                                        elem_id="preserved-memory")
                    fp8 = gr.Dropdown(FP8_CHOICES, value=FP8_CHOICE_OF[defaults.get("fp8")],
                                      label="fp8 weight storage (transformer)",
                                      info="Halves the transformer's memory; results differ slightly from bf16.",
                                      elem_id="fp8")

            with gr.Column(scale=1):
                preview = gr.Image(label="Latest latents (preview, every step)", interactive=False, visible=False,
                                   height=200, format="png", elem_id="preview")
                video = gr.Video(label="Video so far (a new section appears as soon as it is written)",
                                 autoplay=True, loop=False, height=512, interactive=False, buttons=["download"],
                                 elem_id="video")
                progress = gr.HTML(render_message("Upload an image, write a prompt and press Start."),
                                   elem_id="progress")
                final_file = gr.File(label="Final video", interactive=False, elem_id="final-file")

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

        with gr.Tab("Queue", elem_id="queue-tab"):
            # Empty in the page's config; filled for the viewer once the page has opened (see refresh_queue).
            queue_table = gr.Dataframe(headers=list(QUEUE_COLUMNS), value=[],
                                       interactive=False, wrap=True, elem_id="queue-table",
                                       label="Jobs: running, then waiting in order, then ended (kept across "
                                             "restarts; click a row to pick it)")
            with gr.Row(equal_height=True):
                queue_job = gr.Textbox(label="Job id", placeholder="click a row", scale=2, elem_id="queue-job")
                queue_place = gr.Number(value=1, precision=0, minimum=1, scale=1,
                                        label="Place among your waiting jobs" if settings.logins_on else "Place",
                                        elem_id="queue-place")
                move_btn = gr.Button("Move to place", size="sm", elem_id="queue-move")
                cancel_btn = gr.Button("Cancel", size="sm", variant="stop", elem_id="queue-cancel")
                retry_btn = gr.Button("Retry", size="sm", elem_id="queue-retry")
                delete_btn = gr.Button("Delete", size="sm", elem_id="queue-delete")
            queue_note = gr.Markdown("", elem_id="queue-note")
            queue_timer = gr.Timer(QUEUE_REFRESH_S)

        # Hidden outputs of the API endpoint.
        api_video = gr.File(label="video", visible=False)
        api_status = gr.JSON(label="status", visible=False)
        api_trigger = gr.Button(visible=False)

        job_inputs = [image, prompt, model, seconds, seed, steps, distilled_guidance, latent_window_size, cfg,
                      cfg_rescale, negative_prompt, use_teacache, teacache_threshold, crf, resolution,
                      gpu_memory_preservation, fp8]
        stream_outputs = [job_state, browser_job, preview, progress, video, final_file, start_btn, stop_btn,
                          gallery, records_state]

        # Streaming ---------------------------------------------------------------------------------------------

        def refreshed_gallery(viewer: Viewer) -> tuple[Any, list[dict[str, Any]]]:
            """The viewer's past generations; the records (server paths) stay in server-side state."""
            records = service.list_outputs(limit=settings.gallery_size, viewer=viewer)
            kept = [{"video": str(r.video), "input_image": str(r.input_image) if r.input_image else None,
                     "settings": r.settings} for r in records]
            return gr.update(value=gallery_items(records, served.serve)), kept

        def stream(job_id: str, session: str, token: int, viewer: Viewer, *, own: bool,
                   with_gallery: bool = False) -> Iterator[list[Any]]:
            """Yield page updates for ``job_id`` until it ends, or until the session follows a newer stream; each
            output only when it changed."""
            try:
                updates = snapshots_to_show(service, job_id, PAGE_UPDATE_INTERVAL_S, PAGE_REDRAW_INTERVAL_S, viewer)
                snapshot = next(updates)
                frame = first_frame(snapshot, own, served)
                if with_gallery:
                    frame[8], frame[9] = refreshed_gallery(viewer)
                if not latest_streams.is_current(session, token):
                    return
                yield frame
                for previous, latest in itertools.pairwise(itertools.chain([snapshot], updates)):
                    frame = next_frame(previous, latest, own, served)
                    if latest.state.done:
                        frame[8], frame[9] = refreshed_gallery(viewer)
                    if not latest_streams.is_current(session, token):
                        return
                    yield frame
            except KeyError:  # a long-finished job the service has forgotten
                if latest_streams.is_current(session, token):
                    yield idle_frame("That job is no longer known to the app; see the outputs gallery.")
            finally:
                latest_streams.end(session, token)

        def on_start(image: dict[str, Any] | None, prompt: str, model: str, seconds: float, seed: float,
                     steps: float, distilled_guidance: float, latent_window_size: float, cfg: float,
                     cfg_rescale: float, negative_prompt: str, use_teacache: bool, teacache_threshold: float,
                     crf: float, resolution: float, gpu_memory_preservation: float | None, fp8: str,
                     request: gr.Request) -> Iterator[list[Any]]:
            values = _job_values(locals())
            session = request.session_hash or ""
            viewer = viewer_of(request)
            token = latest_streams.begin(session)  # from here on, the page-load stream draws nothing more
            image = upload_path(image)
            try:
                job_id = service.submit(build_request(image, values), owner=viewer.submitter,
                                        max_pending=settings.max_pending_per_user)
            except (FramePackError, RuntimeError) as error:
                # A refused request is the user's to fix: say what and how, in the page, and stay ready.
                message, hint = readable_error(error, image)
                gr.Warning(f"{message} How to fix: {hint}" if hint else message)
                yield idle_frame(message, hint=hint, error=True)
                latest_streams.end(session, token)
                return
            logger.info("Job %s submitted from the page", job_id)
            yield from stream(job_id, session, token, viewer, own=True)

        def on_load(own_job: str | None, request: gr.Request) -> Iterator[list[Any]]:
            """On page load: follow this browser's unfinished job, else the running one, else show the last."""
            session = request.session_hash or ""
            viewer = viewer_of(request)
            token = latest_streams.begin(session)
            # The browser's stored job id is only a hint: a job the viewer may not see is as good as unknown.
            own_alive = own_job is not None and _is_alive(service, own_job, viewer)
            job_id = own_job if own_alive else service.active_job_id(viewer)
            if job_id is None and own_job is not None and _is_known(service, own_job, viewer):
                job_id = own_job  # finished while the page was away: show its result
            if job_id is None:
                frame = idle_frame()
                frame[8], frame[9] = refreshed_gallery(viewer)
                if latest_streams.is_current(session, token):
                    yield frame
                latest_streams.end(session, token)
                return
            yield from stream(job_id, session, token, viewer, own=job_id == own_job, with_gallery=True)

        def on_stop(job_id: str | None, request: gr.Request) -> None:
            if job_id is not None and service.cancel(job_id, viewer_of(request)):
                logger.info("Stop requested for job %s", job_id)

        load_event = demo.load(on_load, inputs=[browser_job], outputs=stream_outputs, show_progress="hidden",
                               api_visibility="private", concurrency_id="stream")
        # preprocess=False: the handlers get the upload as Gradio stored it, unopened (see upload_path).
        start_btn.click(on_start, inputs=job_inputs, outputs=stream_outputs, show_progress="hidden",
                        api_visibility="private", concurrency_id="stream", cancels=[load_event], preprocess=False)
        stop_btn.click(on_stop, inputs=[job_state], outputs=None, api_visibility="private", concurrency_limit=None,
                       show_progress="hidden")

        def on_free_memory() -> None:
            gr.Info(service.free_memory())

        free_btn.click(on_free_memory, outputs=None, api_visibility="private", concurrency_limit=None,
                       show_progress="hidden")

        # Small input helpers -----------------------------------------------------------------------------------

        quick.click(lambda sample: sample[0], inputs=[quick], outputs=[prompt], api_visibility="private",
                    show_progress="hidden", concurrency_limit=None)
        model.change(lambda choice: gr.update(visible=choice == "original"), inputs=[model], outputs=[model_note],
                     api_visibility="private", show_progress="hidden", concurrency_limit=None)
        random_seed_btn.click(lambda: random.randrange(RANDOM_SEED_LIMIT), outputs=[seed],
                              api_visibility="private", show_progress="hidden", concurrency_limit=None)
        def on_refresh_gallery(request: gr.Request) -> tuple[Any, list[dict[str, Any]]]:
            return refreshed_gallery(viewer_of(request))

        refresh_btn.click(on_refresh_gallery, outputs=[gallery, records_state], api_visibility="private",
                          concurrency_limit=None)

        def load_settings(records: list[dict[str, Any]], event: gr.SelectData) -> list[Any]:
            record = records[event.index] if records and 0 <= event.index < len(records) else None
            if record is None:
                return [gr.skip()] * (len(job_inputs) + 3)
            values = settings_to_inputs(record["settings"], defaults)
            name = Path(record["video"]).name
            note = f"Loaded the settings of `{name}`. Press Start to run them again."
            video_copy = served.serve(record["video"])
            image_copy = served.serve(record["input_image"]) if record["input_image"] else None
            return [image_copy or gr.skip(), *values, video_copy, video_copy, note]

        gallery.select(load_settings, inputs=[records_state], outputs=[*job_inputs, video, final_file, loaded_note],
                       api_visibility="private", show_progress="hidden", concurrency_limit=None)

        def load_from_video(path: str | None) -> list[Any]:
            """The settings of an uploaded video into the form (the start image stays as it is), as the gallery
            does; a file without a valid description leaves the form alone and says why."""
            if not path:
                return [gr.skip()] * (len(job_inputs) + 3)
            try:
                values, note = video_settings(Path(path), defaults)
            except InvalidInputError as error:
                message, hint = readable_error(error, path)
                gr.Warning(f"{message} How to fix: {hint}" if hint else message)
                note = f"**Could not load settings:** {message}" + (f" How to fix: {hint}" if hint else "")
                return [gr.skip()] * (len(job_inputs) + 2) + [note]
            return [gr.skip(), *values, gr.skip(), gr.skip(), note]

        def queue_rows_for(viewer: Viewer) -> list[list[Any]]:
            places = {job_id: place for place, job_id in enumerate(service.queued_job_ids(), start=1)}
            return queue_table_rows(*service.queue_listing(viewer), places)

        def refresh_queue(request: gr.Request) -> tuple[list[list[Any]], str]:
            """The viewer's queue rows and the worker's health, every QUEUE_REFRESH_S and once at page load."""
            return queue_rows_for(viewer_of(request)), health_markdown(service.health())

        def pick_queued_job(rows: Any, event: gr.SelectData) -> str:
            row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            values = rows.values.tolist() if hasattr(rows, "values") else rows
            return str(values[row][1]) if 0 <= row < len(values) else ""

        def queue_action(action: str) -> Callable[..., tuple[list[list[Any]], str]]:
            def act(job_id: str, place: float | None, request: gr.Request) -> tuple[list[list[Any]], str]:
                viewer = viewer_of(request)
                job_id = str(job_id or "").strip()
                if not job_id:
                    return queue_rows_for(viewer), "Pick a job first: click its row."
                if not JOB_ID_PATTERN.fullmatch(job_id):  # typed text is never passed to the queue as it is
                    return queue_rows_for(viewer), "There is no such job: click a row to pick one."
                try:
                    if action == "move":
                        service.move(job_id, int(place or 1), viewer)
                        note = f"Moved {job_id} to place {int(place or 1)}" + (
                            "." if viewer.sees_everything else " among your waiting jobs (others' keep theirs).")
                    elif action == "cancel":
                        note = f"Cancelled {job_id}." if service.cancel(job_id, viewer) else \
                            f"{job_id} is not waiting or running."
                    elif action == "retry":
                        service.retry(job_id, viewer)
                        note = f"{job_id} is queued again; it resumes from its last finished section."
                    else:
                        service.delete(job_id, viewer)
                        note = f"Deleted {job_id} (its video, if any, stays in the output folder)."
                except (FramePackError, ValueError, OverflowError) as error:
                    note = (f"**{error.message}** {error.hint}".strip() if isinstance(error, FramePackError)
                            else f"**Place must be a whole number:** {error}")
                return queue_rows_for(viewer), note
            return act

        queue_timer.tick(refresh_queue, outputs=[queue_table, health_note], api_visibility="private", queue=False,
                         show_progress="hidden")
        demo.load(refresh_queue, outputs=[queue_table, health_note], api_visibility="private", queue=False,
                  show_progress="hidden")
        queue_table.select(pick_queued_job, inputs=[queue_table], outputs=[queue_job], api_visibility="private",
                           queue=False, show_progress="hidden")
        for button, action in ((move_btn, "move"), (cancel_btn, "cancel"), (retry_btn, "retry"),
                               (delete_btn, "delete")):
            button.click(queue_action(action), inputs=[queue_job, queue_place], outputs=[queue_table, queue_note],
                         api_visibility="private", queue=False, show_progress="hidden")

        from_video.upload(load_from_video, inputs=[from_video], outputs=[*job_inputs, video, final_file, loaded_note],
                          api_visibility="private", show_progress="hidden", concurrency_limit=None)

        # API ---------------------------------------------------------------------------------------------------

        def generate(image: dict[str, Any] | None, prompt: str, model: str, seconds: float, seed: float,
                     steps: float, distilled_guidance: float, latent_window_size: float, cfg: float,
                     cfg_rescale: float, negative_prompt: str, use_teacache: bool, teacache_threshold: float,
                     crf: float, resolution: float, gpu_memory_preservation: float | None = None,
                     fp8: str = "auto", request: gr.Request = None) -> Iterator[tuple[str | None, dict[str, Any]]]:
            """Generate a video from a start image and a prompt; returns (mp4 file, status) when the job ends.

            Waits in the app's queue like a job started from the page; intermediate results carry the status
            (job_id, state, queue_position, section, step, eta_s ...). Stop it with /stop and the job_id.
            """
            values = _job_values(locals())
            viewer = viewer_of(request)
            image = upload_path(image)
            try:
                job_id = service.submit(build_request(image, values), owner=viewer.submitter,
                                        max_pending=settings.max_pending_per_user)
            except FramePackError as error:
                message, hint = readable_error(error, image)
                raise gr.Error(f"{message} How to fix: {hint}" if hint else message) from None
            for snapshot in snapshots_to_show(service, job_id, API_UPDATE_INTERVAL_S, viewer=viewer):
                if not snapshot.state.done:
                    yield None, status_dict(snapshot)
            if snapshot.state == JobState.FAILED:
                hint = f" How to fix: {snapshot.error_hint}" if snapshot.error_hint else ""
                raise gr.Error(api_text(f"{snapshot.error}{hint}"))
            yield served.serve(snapshot.output_video), status_dict(snapshot)

        api_trigger.click(generate, inputs=job_inputs, outputs=[api_video, api_status], api_name="generate",
                          concurrency_id="stream", show_progress="hidden", preprocess=False)

        def job_status(job_id: str, request: gr.Request) -> dict[str, Any]:
            """The status of one of your jobs (as /generate reports it); raises for an unknown job id."""
            try:
                return status_dict(service.snapshot(str(job_id), viewer_of(request)))
            except KeyError:
                raise gr.Error(f"Unknown job id {job_id!r}.") from None

        def stop_job(job_id: str, request: gr.Request) -> bool:
            """Stop one of your jobs after its current step (keeping a partial video) or drop it if queued."""
            return service.cancel(str(job_id), viewer_of(request))

        gr.api(job_status, api_name="status", concurrency_limit=None)
        gr.api(stop_job, api_name="stop", concurrency_limit=None)

        def free_memory() -> str:
            """Unload the models from RAM and VRAM now, or once the queued jobs are done; says which."""
            return service.free_memory()

        gr.api(free_memory, api_name="free_memory", concurrency_limit=None)

    return demo


def _job_values(arguments: dict[str, Any]) -> dict[str, Any]:
    """The JOB_FIELDS among a handler's arguments (its ``locals()``: the handlers' parameters are named after them,
    which is also what names the /generate API's parameters)."""
    return {name: arguments[name] for name in JOB_FIELDS}


def _is_alive(service: GenerationService, job_id: str, viewer: Viewer) -> bool:
    try:
        return not service.snapshot(job_id, viewer).state.done
    except KeyError:
        return False


def _is_known(service: GenerationService, job_id: str, viewer: Viewer) -> bool:
    try:
        service.snapshot(job_id, viewer)
        return True
    except KeyError:
        return False
