"""The page's named API endpoints, for ``gradio_client``: ``/generate`` (image and settings in, the final video
out, the status as it goes), ``/status`` and ``/stop`` (by job id), and ``/free_memory``.

A status is the REST API's ``JobStatus`` (``app.api.status``) as a JSON object: the same keys and values as
``GET /api/v1/jobs/{id}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.api.errors import api_text
from app.service.generation import JobSnapshot, JobState
from app.ui.context import PageContext
from app.ui.generate_tab import JobForm
from app.ui.render import readable_error, upload_path
from app.ui.streams import snapshots_to_show
from framepack_core.errors import FramePackError

API_UPDATE_INTERVAL_S = 0.5


@dataclass
class EndpointOutputs:
    """Hidden components: what ``/generate`` returns, and the button its event hangs on."""

    video: gr.File
    status: gr.JSON
    trigger: gr.Button


def build_endpoint_outputs() -> EndpointOutputs:
    return EndpointOutputs(video=gr.File(label="video", visible=False), status=gr.JSON(label="status", visible=False),
                           trigger=gr.Button(visible=False))


def wire_endpoints(outputs: EndpointOutputs, form: JobForm, context: PageContext) -> None:
    """Register the named endpoints; ``form``'s components are ``/generate``'s inputs, as the page's Start's."""
    service, served = context.service, context.served

    def status_of(snapshot: JobSnapshot) -> dict[str, Any]:
        return context.statuses.of_snapshot(snapshot).model_dump(mode="json")

    # The parameters are named after JOB_FIELDS: gradio_client passes the settings by these names.
    def generate(image: dict[str, Any] | None, prompt: str, model: str, seconds: float, seed: float,
                 steps: float, distilled_guidance: float, latent_window_size: float, cfg: float,
                 cfg_rescale: float, negative_prompt: str, cache: str, cache_threshold: float | None,
                 crf: float, resolution: float, gpu_memory_preservation: float | None = None,
                 fp8: str = "auto", request: gr.Request = None) -> Iterator[tuple[str | None, dict[str, Any]]]:
        """Generate a video from a start image and a prompt; returns (mp4 file, status) when the job ends.

        Waits in the app's queue like a job started from the page; intermediate results carry the status (the
        object GET /api/v1/jobs/{id} returns: id, state, queue_position, section, step, eta_s ...). Stop it with
        /stop and the id.
        """
        values = {"prompt": prompt, "model": model, "seconds": seconds, "seed": seed, "steps": steps,
                  "distilled_guidance": distilled_guidance, "latent_window_size": latent_window_size, "cfg": cfg,
                  "cfg_rescale": cfg_rescale, "negative_prompt": negative_prompt, "cache": cache,
                  "cache_threshold": cache_threshold, "crf": crf, "resolution": resolution,
                  "gpu_memory_preservation": gpu_memory_preservation, "fp8": fp8}
        viewer = context.viewer_of(request)
        path = upload_path(image)
        try:
            job_id = context.submit(path, values, viewer)
        except FramePackError as error:
            message, hint = readable_error(error, path)
            raise gr.Error(f"{message} How to fix: {hint}" if hint else message) from None
        for snapshot in snapshots_to_show(service, job_id, API_UPDATE_INTERVAL_S, viewer=viewer):
            if not snapshot.state.done:
                yield None, status_of(snapshot)
        if snapshot.state == JobState.FAILED:
            hint = f" How to fix: {snapshot.error_hint}" if snapshot.error_hint else ""
            raise gr.Error(api_text(f"{snapshot.error}{hint}"))
        yield served.serve(snapshot.output_video), status_of(snapshot)

    def job_status(job_id: str, request: gr.Request) -> dict[str, Any]:
        """The status of one of your jobs (the object GET /api/v1/jobs/{id} returns); raises for an unknown id."""
        try:
            return status_of(service.snapshot(str(job_id), context.viewer_of(request)))
        except KeyError:
            raise gr.Error(f"Unknown job id {job_id!r}.") from None

    def stop_job(job_id: str, request: gr.Request) -> bool:
        """Stop one of your jobs after its current step (keeping a partial video) or drop it if queued."""
        return service.cancel(str(job_id), context.viewer_of(request))

    def free_memory() -> str:
        """Unload the models from RAM and VRAM now, or once the queued jobs are done; says which."""
        return service.free_memory()

    outputs.trigger.click(generate, inputs=form.inputs(), outputs=[outputs.video, outputs.status],
                          api_name="generate", concurrency_id="stream", show_progress="hidden", preprocess=False)
    gr.api(job_status, api_name="status", concurrency_limit=None)
    gr.api(stop_job, api_name="stop", concurrency_limit=None)
    gr.api(free_memory, api_name="free_memory", concurrency_limit=None)
