"""The HTTP job API, served by the app's own process under ``/api/v1`` (OpenAPI at ``/api/v1/openapi.json``).

    POST   /api/v1/jobs                 submit: multipart with ``image`` and ``settings`` (JSON) or ``spec``
    GET    /api/v1/jobs                 your jobs: running, pending in queue order, then ended
    GET    /api/v1/jobs/{id}            status with progress
    GET    /api/v1/jobs/{id}/events     server-sent events: a ``status`` event at every change, until the end
    PATCH  /api/v1/jobs/{id}            edit a pending job's settings (JSON object of the settings to change)
    POST   /api/v1/jobs/{id}/cancel     stop it (a pending job at once, a running one after its current step)
    POST   /api/v1/jobs/{id}/retry      queue a failed or cancelled job again (it resumes)
    DELETE /api/v1/jobs/{id}            forget an ended or pending job
    GET    /api/v1/jobs/{id}/video      the finished video (or the partial one of a stopped job)

Authentication is the UI's: with ``--auth`` every request needs HTTP Basic credentials of one of its users, and a
user sees only the jobs submitted with that login. Uploads above the app's file size limit are refused (413)
before they are stored; job ids are checked against a strict pattern and files are only ever served from the
output folder, so no path in a request can reach anything else.
"""


import asyncio
import json
import secrets
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, File, Form, HTTPException, Path as PathParam, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from app.service import GenerationService, JobSnapshot, JobState
from app.settings import Settings
from framepack_core.errors import InvalidInputError
from framepack_core.job_queue import QueuedJob, QueueError, QueueState
from framepack_core.job_spec import SETTINGS_FIELDS, JobSpec
from framepack_core.request import GenerationRequest

API_PREFIX = "/api/v1"
JOB_ID_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
UPLOAD_CHUNK_BYTES = 1 << 20
SSE_HEARTBEAT_S = 15.0

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="The job's id, as returned on submit.")]


class JobStatus(BaseModel):
    id: str
    state: str  # queued, running, finished, failed, cancelled
    queue_position: int | None = None
    stage: str | None = None
    section: int | None = None
    total_sections: int | None = None
    step: int | None = None
    total_steps: int | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    video: str | None = None  # file name; download it from /jobs/{id}/video
    error: str | None = None
    hint: str | None = None
    notices: list[str] = []
    spec: dict[str, Any] | None = None


class JobList(BaseModel):
    jobs: list[JobStatus]


class ApiError(BaseModel):
    error: str
    hint: str = ""
    field: str | None = None


_ERRORS = {401: {"model": ApiError}, 404: {"model": ApiError}, 409: {"model": ApiError}, 422: {"model": ApiError}}
_STORE_STATES = {QueueState.PENDING: "queued", QueueState.RUNNING: "running", QueueState.FINISHED: "finished",
                 QueueState.FAILED: "failed", QueueState.CANCELLED: "cancelled"}


def build_api(service: GenerationService, settings: Settings) -> FastAPI:
    """The API over ``service`` (which must have a persistent queue), with the app's ``settings``' logins,
    upload limit and output folder."""
    if service.store is None:
        raise ValueError("the HTTP API needs a service with a persistent queue")
    api = FastAPI(title="FramePack job API", version="1",
                  description="Submit image-to-video jobs, follow them, download the videos. " + (__doc__ or ""))
    basic = HTTPBasic(auto_error=False)
    users = dict(settings.auth)
    output_dir = Path(settings.output_dir).resolve()

    def user(credentials: Annotated[HTTPBasicCredentials | None, Depends(basic)]) -> str | None:
        """The login (None when the app has no --auth). Compared in constant time."""
        if not users:
            return None
        if credentials is not None:
            expected = users.get(credentials.username)
            if expected is not None and secrets.compare_digest(credentials.password.encode(), expected.encode()):
                return credentials.username
        raise HTTPException(401, "Log in with one of the app's --auth users (HTTP Basic).",
                            headers={"WWW-Authenticate": 'Basic realm="FramePack"'})

    Owner = Annotated[str | None, Depends(user)]

    def own_job(job_id: str, owner: str | None) -> QueuedJob:
        try:
            job = service.store.get(job_id)
        except QueueError:
            raise HTTPException(404, f"There is no job {job_id}.") from None
        if owner is not None and job.owner != owner:
            raise HTTPException(404, f"There is no job {job_id}.")  # not 403: ids of others are not revealed
        return job

    def status(job: QueuedJob) -> JobStatus:
        try:
            return _live_status(service.snapshot(job.id), job)
        except KeyError:
            return _stored_status(job)

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail), "hint": ""}, status_code=error.status_code,
                            headers=error.headers)

    @api.exception_handler(InvalidInputError)
    async def invalid_input(request: Request, error: InvalidInputError) -> JSONResponse:
        return JSONResponse({"error": error.message, "hint": error.hint, "field": error.field}, status_code=422)

    @api.exception_handler(QueueError)
    async def queue_conflict(request: Request, error: QueueError) -> JSONResponse:
        return JSONResponse({"error": error.message, "hint": error.hint}, status_code=409)

    @api.post("/jobs", status_code=201, response_model=JobStatus, responses={**_ERRORS, 413: {"model": ApiError}},
              summary="Submit a job")
    async def submit(request: Request, owner: Owner,
                     image: Annotated[UploadFile, File(description="The input image (PNG, JPEG, WebP, ...).")],
                     settings_json: Annotated[str | None, Form(alias="settings", description=(
                         "Generation settings as a JSON object; any of: " + ", ".join(SETTINGS_FIELDS)))] = None,
                     spec_json: Annotated[str | None, Form(alias="spec", description=(
                         "A whole job spec (JSON); its image_sha256 must be the uploaded image's."))] = None,
                     ) -> JobStatus:
        limit = settings.max_file_size_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + UPLOAD_CHUNK_BYTES:
            raise HTTPException(413, f"The upload is larger than the app's limit of {settings.max_file_size_mb:g} MB.")
        upload_dir = service.store.root / "uploads"
        upload_dir.mkdir(exist_ok=True)
        suffix = Path(image.filename or "").suffix.lower()
        suffix = suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ".img"
        handle = tempfile.NamedTemporaryFile(dir=upload_dir, suffix=suffix, delete=False)
        path = Path(handle.name)
        try:
            with handle:
                size = 0
                while chunk := await image.read(UPLOAD_CHUNK_BYTES):
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"The image is larger than the app's limit of "
                                                 f"{settings.max_file_size_mb:g} MB.")
                    handle.write(chunk)
            job_request = _request(path, settings_json, spec_json)
            job_id = await asyncio.to_thread(service.submit, job_request, owner)
        finally:
            path.unlink(missing_ok=True)  # the queue keeps its own copy
        return status(service.store.get(job_id))

    @api.get("/jobs", response_model=JobList, responses=_ERRORS, summary="List your jobs")
    def list_jobs(owner: Owner) -> JobList:
        return JobList(jobs=[status(job) for job in service.queue_rows(owner=owner)])

    @api.get("/jobs/{job_id}", response_model=JobStatus, responses=_ERRORS, summary="A job's status and progress")
    def get_job(job_id: JobId, owner: Owner) -> JobStatus:
        return status(own_job(job_id, owner))

    @api.post("/jobs/{job_id}/cancel", response_model=JobStatus, responses=_ERRORS, summary="Cancel a job")
    def cancel_job(job_id: JobId, owner: Owner) -> JobStatus:
        job = own_job(job_id, owner)
        if not service.cancel(job.id):
            service.store.cancel(job.id)  # not in this process's memory: the store decides (409 if ended)
        return status(service.store.get(job.id))

    @api.patch("/jobs/{job_id}", response_model=JobStatus, responses=_ERRORS, summary="Edit a pending job")
    def edit_job(job_id: JobId, owner: Owner,
                 changes: Annotated[dict[str, Any], Body(description="Settings to change, e.g. {\"seed\": 7}.")]
                 ) -> JobStatus:
        service.edit(own_job(job_id, owner).id, changes)
        return status(service.store.get(job_id))

    @api.post("/jobs/{job_id}/retry", response_model=JobStatus, responses=_ERRORS, summary="Queue a job again")
    def retry_job(job_id: JobId, owner: Owner) -> JobStatus:
        service.retry(own_job(job_id, owner).id)
        return status(service.store.get(job_id))

    @api.delete("/jobs/{job_id}", status_code=204, responses=_ERRORS, summary="Forget an ended or pending job")
    def delete_job(job_id: JobId, owner: Owner) -> None:
        service.delete(own_job(job_id, owner).id)

    @api.get("/jobs/{job_id}/video", response_class=FileResponse, responses=_ERRORS,
             summary="Download the job's video")
    def video(job_id: JobId, owner: Owner) -> FileResponse:
        job = own_job(job_id, owner)
        path = None if job.output is None else Path(job.output).resolve()
        if path is None or not path.is_file():
            raise HTTPException(404, f"Job {job_id} has no video yet ({_STORE_STATES[job.state]}).")
        if not path.is_relative_to(output_dir):
            raise HTTPException(404, f"Job {job_id}'s video is not in the output folder.")
        return FileResponse(path, media_type="video/mp4", filename=path.name)

    @api.get("/jobs/{job_id}/events", responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
             summary="Follow a job: server-sent events")
    async def events(job_id: JobId, owner: Owner) -> StreamingResponse:
        own_job(job_id, owner)

        async def stream():  # noqa: ANN202
            version = -1
            quiet_for = 0.0
            while True:
                try:
                    snapshot = await asyncio.to_thread(service.wait_for_change, job_id, version, 1.0)
                except KeyError:  # not in this process's memory: report the stored state once
                    yield _sse("status", _stored_status(service.store.get(job_id)).model_dump_json())
                    return
                if snapshot.version != version:
                    version, quiet_for = snapshot.version, 0.0
                    yield _sse("status", _live_status(snapshot, service.store.get(job_id)).model_dump_json())
                    if snapshot.state.done:
                        return
                else:
                    quiet_for += 1.0
                    if quiet_for >= SSE_HEARTBEAT_S:
                        quiet_for = 0.0
                        yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return api


def _request(image: Path, settings_json: str | None, spec_json: str | None) -> GenerationRequest:
    if spec_json is not None and settings_json is not None:
        raise InvalidInputError("spec", "give either settings or a spec, not both")
    if spec_json is not None:
        spec = JobSpec.from_json(spec_json)
        spec.check_image(image)
        return spec.request(image)
    try:
        values = json.loads(settings_json) if settings_json else {}
    except ValueError as error:
        raise InvalidInputError("settings", f"is not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise InvalidInputError("settings", "must be a JSON object of generation settings")
    for name in values:
        if name not in SETTINGS_FIELDS:
            raise InvalidInputError(name, "is not a generation setting", f"Settings are: {', '.join(SETTINGS_FIELDS)}.")
    try:
        return GenerationRequest(image=image, **values).validated()
    except TypeError as error:
        raise InvalidInputError("settings", str(error)) from None


def _live_status(snapshot: JobSnapshot, job: QueuedJob) -> JobStatus:
    state = "queued" if snapshot.state == JobState.QUEUED else snapshot.state.value
    video = snapshot.output_video or job.output
    return JobStatus(id=job.id, state=state, queue_position=snapshot.queue_position, stage=snapshot.stage_message,
                     section=snapshot.section, total_sections=snapshot.total_sections, step=snapshot.step,
                     total_steps=snapshot.total_steps, elapsed_s=round(snapshot.elapsed_s, 3),
                     eta_s=None if snapshot.eta_s is None else round(snapshot.eta_s, 3),
                     video=None if video is None or not snapshot.state.done else Path(video).name,
                     error=snapshot.error, hint=snapshot.error_hint, notices=list(snapshot.notices),
                     spec=job.spec.to_dict())


def _stored_status(job: QueuedJob) -> JobStatus:
    return JobStatus(id=job.id, state=_STORE_STATES[job.state], section=job.sections_done or None,
                     total_sections=job.total_sections, error=job.error, hint=job.hint,
                     video=None if job.output is None or not job.state.ended else job.output.name,
                     spec=job.spec.to_dict())


def _sse(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"

