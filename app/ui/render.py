"""The page's pure pieces: its inputs to a request and back, and a job's snapshot as HTML and table rows.

Nothing here touches Gradio's components or the service: the page's parts (``app.ui``) and their tests call
these. A job's status as JSON is the REST API's ``JobStatus`` (``app.api.status``).
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.service.generation import JobSnapshot, JobState, WorkerHealth
from app.service.outputs import OutputRecord
from framepack_core.durations import duration_text
from framepack_core.errors import InvalidInputError, render_fields
from framepack_core.jobs.batch import BatchSummary
from framepack_core.jobs.output_description import read_output_description
from framepack_core.jobs.queue import DamagedJob, QueuedJob
from framepack_core.request import GenerationRequest
from framepack_core.sampling.cache_methods import DEFAULT_CACHE_THRESHOLDS, CacheMethod

FP8_CHOICES = [("Automatic (only when bf16 cannot fit)", "auto"), ("Always", "on"), ("Never", "off")]
FP8_VALUES = {"auto": None, "on": True, "off": False}
FP8_CHOICE_OF = {value: choice for choice, value in FP8_VALUES.items()}

# The job inputs after the image, in the order every handler and the /generate endpoint take them. The names
# are GenerationRequest fields, so saved settings load back by name.
JOB_FIELDS = ("prompt", "model", "seconds", "seed", "steps", "distilled_guidance", "latent_window_size", "cfg",
              "cfg_rescale", "negative_prompt", "cache", "cache_threshold", "crf", "resolution",
              "gpu_memory_preservation", "fp8")

# What the page calls a setting that an error points at: the label of its control (the tab takes its labels from
# here, so the two never differ), or, for what is set when the app starts (no control on the page), words that say
# so. Never a command-line flag.
FIELD_LABELS = {"seconds": "Video length (seconds)", "resolution": "Base resolution",
                "latent_window_size": "Latent window size", "cache": "Step cache",
                "cache_threshold": "Cache threshold",
                "gpu_memory_preservation": "GPU memory to preserve (GB)", "fp8": "fp8 weight storage (transformer)",
                # The Story panel's controls (app/ui/story_panel.py)
                "end_image": "End image", "end_strength": "End strength",
                "end_image_embedding_weight": "End image embedding weight", "loop": "Loop (end at the start image)",
                "keyframes": "Keyframe (section timeline)", "prompt_blend_sections": "Prompt blend (sections)",
                "extend_video": "Video to extend", "context_frames": "Context frames",
                "extend_output": "Extended video's output", "reroll_from": "Re-roll from here",
                "rerolls": "Re-roll from here", "model": "Model",
                # The LoRA panel's (app/ui/lora_panel.py)
                "loras": "LoRA", "lora_fuse": "Fuse LoRAs (faster, slightly different)"}
# The request fields the Story panel fills (app/ui/story.py story_request_values), besides JOB_FIELDS.
STORY_FIELDS = ("end_image", "end_strength", "end_image_embedding_weight", "loop", "keyframes",
                "prompt_blend_sections", "extend_video", "context_frames", "extend_output")
# The request fields the LoRA panel fills (app/ui/lora.py lora_request_values), besides JOB_FIELDS.
LORA_FIELDS = ("loras", "lora_fuse")
APP_SETTING_WORDS = {"save_latents": "latents file", "job_dir": "job folder",
                     "models_dir": "the app's models folder (a start-up setting)", "offline": "the app's offline mode",
                     "device": "the app's device setting", "dtype": "the app's dtype setting",
                     "attention": "the app's attention setting (a start-up setting)",
                     "compile": "the app's compile setting (a start-up setting)",
                     "devices": "the app's worker devices (a start-up setting)",
                     "ray": "the app's Ray address (a start-up setting)",
                     "ray_workers": "the app's number of Ray workers (a start-up setting)"}


def page_field_name(field: str) -> str | None:
    """How the page names ``field`` inside an error's text (a control's label in quotes)."""
    return f"'{FIELD_LABELS[field]}'" if field in FIELD_LABELS else APP_SETTING_WORDS.get(field)


def page_text(text: str) -> str:
    """An error's message or hint as the page shows it: each setting named by its label."""
    return render_fields(text, page_field_name)


# Turning inputs into a request ---------------------------------------------------------------------------------

def build_request(image: str | None, values: dict[str, Any]) -> GenerationRequest:
    """The request for the page's (or the API's) inputs; ``InvalidInputError`` when there is no image."""
    values = {**values, "fp8": FP8_VALUES.get(values.get("fp8"), values.get("fp8"))}
    if values.get("cache") is not None and not takes_threshold(values["cache"]):
        values["cache_threshold"] = None  # the page's slider always sends a number
    known = {name: values[name] for name in (*JOB_FIELDS, *STORY_FIELDS, *LORA_FIELDS) if values.get(name) is not None}
    if not image and known.get("extend_video"):
        return _clip_only_request(known)
    if not image:
        raise InvalidInputError("image", "no start image was given", "Upload a start image first.")
    # Number components send floats (2.0); the request validates whole numbers itself.
    return GenerationRequest(image=Path(image), **known)


def takes_threshold(cache: Any) -> bool:
    """Whether the cache method uses the threshold slider (none and TaylorSeer do not)."""
    try:
        return DEFAULT_CACHE_THRESHOLDS[CacheMethod(getattr(cache, "value", cache))] is not None
    except ValueError:  # an unknown method: the request names it
        return True


def slider_threshold(cache: Any, threshold: float | None) -> float:
    """The threshold slider's value: the one given, else the method's default, else TeaCache's usual value (the
    slider needs a number even for a method that takes none)."""
    if threshold is None:
        threshold = DEFAULT_CACHE_THRESHOLDS[CacheMethod(getattr(cache, "value", cache))]
    return DEFAULT_CACHE_THRESHOLDS[CacheMethod.TEACACHE] if threshold is None else threshold


def _clip_only_request(known: dict[str, Any]) -> GenerationRequest:
    """Extending a clip without a start image: the start image is the clip's last frame, as on the command line
    and over REST (written next to the upload; the same clip always gives the same file)."""
    from framepack_core.media.video_input import write_last_frame

    clip = Path(known["extend_video"])
    return GenerationRequest(image=write_last_frame(clip, clip.parent), **known)


def upload_path(value: Any) -> str | None:
    """The file behind an image input that Gradio did not preprocess: a FileData dict, or already a path.

    The Start and /generate handlers skip Gradio's preprocessing because it opens the upload with PIL first and
    turns a file that is not an image into a bare "Error"; unopened, the file reaches the service, whose image
    check refuses it with a message that says what is wrong and how to fix it. Gradio has still checked that the
    file is one of its uploads before the handler runs.
    """
    if isinstance(value, dict):
        return value.get("path")
    return str(value) if value else None


def settings_to_inputs(settings: dict[str, Any], defaults: dict[str, Any]) -> list[Any]:
    """Saved settings (a settings JSON) -> values for the JOB_FIELDS components; missing keys keep defaults."""
    from framepack_core.jobs.spec import settings_in_current_names

    try:
        settings = settings_in_current_names(dict(settings))  # saved before the cache setting had its name
    except InvalidInputError:
        settings = {k: v for k, v in settings.items() if k not in ("use_teacache", "teacache_threshold")}
    values = []
    for name in JOB_FIELDS:
        value = settings.get(name, defaults.get(name))
        if name == "fp8":
            value = FP8_CHOICE_OF.get(value, "auto")
        if name == "cache_threshold":
            value = slider_threshold(settings.get("cache", defaults.get("cache")), value)
        values.append(getattr(value, "value", value))  # the model enum -> "original" / "f1"
    return values


def video_settings(video: Path, defaults: dict[str, Any]) -> tuple[list[Any], str]:
    """Values for the JOB_FIELDS components from a video's description, and a note for the page.

    Raises ``InvalidInputError`` (field "video") for a file that is not a video or carries no valid description.
    """
    description = read_output_description(video, field="video")
    values = settings_to_inputs(dict(description.spec.settings), defaults)
    note = (f"Loaded the settings of `{video.name}`. To make the same video, use its start image (SHA-256 "
            f"`{description.spec.image_sha256[:12]}…`), then press Start.")
    return values, note


# Rendering a snapshot ------------------------------------------------------------------------------------------

_STATE_LABELS = {JobState.QUEUED: "Queued", JobState.RUNNING: "Running", JobState.FINISHED: "Finished",
                 JobState.CANCELLED: "Stopped", JobState.FAILED: "Failed"}


QUEUE_COLUMNS = ("#", "id", "state", "progress", "prompt", "seconds", "seed", "submitted", "error", "batch")
# Wide enough at 1366 px that no header breaks inside a word and a date fits; the prompt and the error share the rest.
QUEUE_COLUMN_WIDTHS = ("3%", "10%", "11%", "11%", "15%", "7%", "8%", "13%", "14%", "8%")
# Batches named above the Queue tab's table: those with jobs waiting or running come first in the listing.
QUEUE_BATCHES_SHOWN = 6
QUEUE_REFRESH_S = 2.0
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_]{1,64}")


def queue_table_rows(jobs: list[QueuedJob], damaged: list[DamagedJob] = (),
                     places: dict[str, int] | None = None) -> list[list[Any]]:
    """The Queue tab's rows: running, pending with their place, then ended jobs, then damaged ones (stored rows
    that cannot be read: they can only be deleted). ``places``: each pending job's place in the whole queue (a
    user sharing the app sees only their rows, but their place counts everyone's waiting jobs, as the progress
    panel's does); without it, the places of the rows listed."""
    rows = []
    place = 0
    for job in jobs:
        if job.state == JobState.QUEUED:
            place = places.get(job.id, place + 1) if places is not None else place + 1
        settings = job.spec.settings
        progress = f"{job.sections_done}/{job.total_sections} sections" if job.total_sections else ""
        prompt = str(settings.get("prompt", ""))
        rows.append([place if job.state == JobState.QUEUED else "", job.id,
                     job.state.value + (f" on {job.worker}" if job.state != JobState.QUEUED and job.worker else "")
                     + (" (stopping)" if job.cancel_requested else ""), progress,
                     prompt if len(prompt) <= 60 else prompt[:57] + "...", settings.get("seconds"),
                     settings.get("seed"), time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at)),
                     page_text(job.error or ""), job.batch_id or ""])
    for row in damaged:
        rows.append(["", row.id, "damaged", "", "", None, None, "", f"{row.reason} (delete it)", ""])
    return rows


def batches_markdown(summaries: list[BatchSummary]) -> str:
    """The batches among the viewer's jobs, one line each ("batch 3f2a91c0: 6 jobs, 2 done, 4 waiting")."""
    lines = [f"- {summary.text()}" for summary in summaries[:QUEUE_BATCHES_SHOWN]]
    if len(summaries) > QUEUE_BATCHES_SHOWN:
        lines.append(f"- and {len(summaries) - QUEUE_BATCHES_SHOWN} older batches")
    return "**Batches**\n\n" + "\n".join(lines) if lines else ""


def render_message(text: str, *, hint: str = "", error: bool = False, state: str = "idle") -> str:
    """A one-message progress box (idle text, a refused request)."""
    css = "fp-error" if error else "fp-muted"
    body = f'<div class="{css}">{"<b>Error:</b> " if error else ""}{html.escape(page_text(text))}</div>'
    if hint:
        body += f'<div class="{css}">How to fix: {html.escape(page_text(hint))}</div>'
    return f'<div class="fp-progress" data-state="{state}">{body}</div>'


def render_image_check(message: str, hint: str = "") -> str:
    """What is wrong with a dropped start image, under the image box (``message`` and ``hint`` in the page's
    words already, see ``readable_error``)."""
    text = f"<b>{html.escape(message)}</b>" + (f" How to fix: {html.escape(hint)}" if hint else "")
    return f'<div class="fp-error">{text}</div>'


# A stage this long without news shows how long it has run (decoding, writing and loading send no steps).
STAGE_TIMER_AFTER_S = 1.0


def render_progress(snapshot: JobSnapshot, *, own: bool = True, now: float | None = None) -> str:
    """Stage, section i/n, step j/k, elapsed, ETA and a bar; errors with their fix; notices.

    The outer element carries ``data-state`` (and section/step) so tests and scripts can read the state. Elapsed
    time and ETA run on to ``now`` (wall time), and a stage without news for a second shows its own time, so a
    redraw during a long decode or load shows the job alive.
    """
    now = time.time() if now is None else now
    s = snapshot.ticking(now)
    if s.queue_position:
        stage = (f"Place in the queue: <b>{s.queue_position}</b> (jobs start in this order as soon as a worker "
                 "is free)")
    else:
        stage = html.escape(s.stage_message)
        quiet_s = now - s.news_at if s.news_at is not None else 0.0
        if s.state == JobState.RUNNING and s.stage_started_at is not None and quiet_s >= STAGE_TIMER_AFTER_S:
            stage += f' <span class="fp-muted">({duration_text(now - s.stage_started_at)} in this stage)</span>'
    on = f" on <b>{html.escape(s.worker)}</b>" if s.worker and s.state != JobState.QUEUED else ""
    lines = [f"<b>{_STATE_LABELS[s.state]}</b>{on} &middot; {stage}"]
    if not own:
        lines.append('<span class="fp-muted">This job was started from another tab or by an API client.</span>')
    counters = []
    if s.total_sections:
        counters.append(f"section {s.section or 0}/{s.total_sections}")
    if s.total_steps:
        counters.append(f"step {s.step or 0}/{s.total_steps}")
    if s.state != JobState.QUEUED:
        counters.append(f"elapsed {duration_text(s.elapsed_s)}")
    if s.state == JobState.RUNNING:
        counters.append(f"ETA {duration_text(s.eta_s)}")
    if counters:
        lines.append(" &middot; ".join(counters))
    bar = ""
    if s.total_sections and s.total_steps and s.section:
        done = (s.section - 1) * s.total_steps + (s.step or 0)
        total = s.total_sections * s.total_steps
        if s.state == JobState.FINISHED:
            done = total
        bar = f'<progress value="{done}" max="{total}"></progress>'
    if s.error:
        lines.append(f'<span class="fp-error"><b>Error:</b> {html.escape(page_text(s.error))}</span>')
        if s.error_hint:
            lines.append(f'<span class="fp-error">How to fix: {html.escape(page_text(s.error_hint))}</span>')
        if s.error_details:  # folded: the message and the one fix come first, not a wall of red
            lines.append('<details class="fp-details"><summary>Details</summary>'
                         f'<pre>{html.escape(page_text(s.error_details))}</pre></details>')
    if s.video_frames and s.state == JobState.RUNNING:
        lines.append(f'<span class="fp-muted">The finished video will have {s.video_frames} frames '
                     f'({s.video_frames / 30:.1f} s at 30 fps).</span>')
    if s.output_video is not None and s.state.done:
        lines.append(f"Saved as <code>{html.escape(s.output_video.name)}</code> in the output folder.")
    for notice in s.notices:
        lines.append(f'<span class="fp-muted">Note: {html.escape(notice)}</span>')
    attributes = (f'data-state="{s.state.value}" data-job="{html.escape(s.job_id)}" '
                  f'data-section="{s.section or 0}" data-step="{s.step or 0}"')
    return f'<div class="fp-progress" {attributes}>{"<br>".join(lines)}{bar}</div>'


def gallery_items(records: list[OutputRecord], serve: Callable[[Path], str | None] = str
                  ) -> list[tuple[str, str]]:
    """(thumbnail, caption) per past generation: the cropped input image, else the video itself. ``serve`` turns
    an output file into a path Gradio may hand to the browser (``ServedFiles.serve``)."""
    items = []
    for record in records:
        settings = record.settings
        prompt = str(settings.get("prompt") or "(no prompt)")
        prompt = prompt if len(prompt) <= 48 else prompt[:47] + "…"
        state = "" if settings.get("complete", True) else " · partial"
        caption = (f"{settings.get('model', '?')} · {settings.get('seconds', '?')} s · seed {settings.get('seed', '?')}"
                   f"{state} · {prompt}")
        thumbnail = serve(record.input_image or record.video)
        if thumbnail is not None:
            items.append((thumbnail, caption))
    return items


def readable_error(error: Exception, image: str | None) -> tuple[str, str]:
    """(message, hint) of a refused request, naming an upload by its file name rather than its server path."""
    message, hint = page_text(getattr(error, "message", str(error))), page_text(getattr(error, "hint", ""))
    if image:
        message = message.replace(str(image), Path(image).name)
    return message, hint


def workers_markdown(health: WorkerHealth) -> str:
    """With several workers, one line saying which are busy (whose job is not said: the table names the viewer's
    own jobs' workers). Empty when the app runs one job at a time itself."""
    if not health.workers:
        return ""
    states = [f"{html.escape(w['name'])} " + ("stopped (lost too often)" if w["retired"]
                                               else "busy" if w["job_id"] else "idle") for w in health.workers]
    return f"**Workers** ({len(states)}, a job each at a time): " + " · ".join(states)


def health_markdown(health: WorkerHealth) -> str:
    """A warning line at the top of the page when jobs cannot run (empty when all is well)."""
    problem = health.problem
    lines = [f"⚠️ **{problem}**"] if problem else []
    if health.queue_note:
        lines.append(f"⚠️ {health.queue_note}")
    return "\n\n".join(lines)
