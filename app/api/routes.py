"""The HTTP job API, served by the app's own process under ``/api/v1`` (OpenAPI at ``/api/v1/openapi.json``).

    POST   /api/v1/jobs                 submit: multipart with ``image`` and ``settings`` (JSON) or ``spec``
    GET    /api/v1/jobs                 your jobs, a page at a time (``limit``, ``offset``): running, pending in
                                        queue order, then ended; and your stored jobs that cannot be read
    GET    /api/v1/jobs/{id}            status with progress
    GET    /api/v1/jobs/{id}/events     server-sent events: a ``status`` event at every change, until the end
    PATCH  /api/v1/jobs/{id}            edit a pending job's settings (JSON object of the settings to change)
    POST   /api/v1/jobs/{id}/cancel     stop it (a pending job at once, a running one after its current step)
    POST   /api/v1/jobs/{id}/retry      queue a failed or cancelled job again (it resumes)
    POST   /api/v1/jobs/{id}/reroll     queue it re-rolled from a section as a new job (JSON: from_section, seed,
                                        prompt); the sections before are kept, the old job and video stay
    DELETE /api/v1/jobs/{id}            forget an ended, pending or damaged job
    GET    /api/v1/jobs/{id}/video      the finished video (else the partial one of a stopped attempt)
    GET    /api/v1/health               whether the worker is alive and what it last failed on
    GET    /api/v1/loras                the LoRA folder's files, which settings.loras names
                                        (``app.api.lora_routes``)
    POST   /api/v1/batches, GET /api/v1/batches[/{id}], POST /api/v1/batches/{id}/cancel: batches
                                        (``app.api.batch_routes``)

The job routes answer a ``JobStatus`` (``app.api.status``), the same object that Gradio's ``/generate`` and
``/status`` endpoints return.

Authentication is the UI's: with ``--auth`` every request needs HTTP Basic credentials of one of its users, and a
user sees only the jobs submitted with that login (an ``--admin`` sees all). The login and the size of the
request are checked before its body is read (``app.api.limits``), and failed logins back off (``app.logins``).
Each user may have ``max_pending_per_user`` jobs waiting. Job ids are checked against a strict pattern and files
are only ever served from the output folder, so no path in a request can reach anything else; error messages
never show server paths (``app.api.errors``). The docs page (``/docs``) works offline and needs no login.
"""


import asyncio
import errno
import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.security import HTTPBasic
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from app.access import Viewer
from app.api.batch_routes import MAX_BATCH_IMAGES, add_batch_routes
from app.api.errors import ApiRefusal, PathHider, default_hidden_folders, install_error_handlers
from app.api.limits import LOGIN_SCOPE_KEY, ApiDoor
from app.api.lora_routes import add_lora_routes, lora_settings, spec_lora_files
from app.api.status import JobStatus, JobStatuses, served_video
from app.api.story_uploads import story_uploads
from app.logins import LoginGuard
from app.service.generation import GenerationService
from app.settings import Settings
from framepack_core.errors import DiskFullError, InvalidInputError
from framepack_core.jobs.queue import DamagedJob, QueuedJob, QueueError
from framepack_core.jobs.spec import SETTINGS_FIELDS, JobSpec, settings_in_current_names
from framepack_core.lora.library import LoraFolder
from framepack_core.request import GenerationRequest

API_PREFIX = "/api/v1"
JOB_ID_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
UPLOAD_CHUNK_BYTES = 1 << 20
# Room in a request body for the multipart framing and the settings beside an image of the largest allowed size.
BODY_ALLOWANCE_BYTES = 1 << 20
SSE_HEARTBEAT_S = 15.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_OFFSET = 1_000_000_000  # far beyond any queue, and within SQLite's integers
# The docs need no login: they describe the API and hold nothing of anyone's. Their assets come from the
# fastapi-offline package, so the page works without internet.
DOCS_ASSETS = "/docs-assets"
OPEN_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json")

NO_SUCH_JOB_HINT = "Check the id: GET /jobs lists your jobs."

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="The job's id, as returned on submit.")]


class DamagedJobRow(BaseModel):
    id: str
    reason: str  # what is wrong with the stored row; DELETE /jobs/{id} removes it


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int  # all of your jobs, on every page
    next_offset: int | None  # the offset of the next page, None on the last one
    damaged: list[DamagedJobRow]  # stored rows of yours that cannot be read


class WorkerReport(BaseModel):
    name: str = Field(description="The worker: a device such as cuda:1, or a Ray actor.")
    busy: bool = Field(description="Whether it runs a job now.")
    job_id: str | None = Field(None, description="The job it runs, when the caller may see that job.")
    retired: bool = Field(False, description="Lost too often in a row: it takes no more jobs until a restart.")


class WorkerHealthReport(BaseModel):
    model_config = ConfigDict(extra="allow")

    alive: bool
    running_here: bool
    last_error: str | None = None
    last_error_at: float | None = None
    queue_owner: str | None = None
    queue_note: str | None = None
    workers: list[WorkerReport] = []


class Health(BaseModel):
    worker: WorkerHealthReport


class RerollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_section: int  # 1-based in generation order, as progress counts sections (the original model: the end first)
    seed: int | None = None  # None: a new random seed
    prompt: str | None = None  # None: the job's prompt


class ApiError(BaseModel):
    error: str
    hint: str = ""
    field: str | None = None


_ERRORS = {401: {"model": ApiError}, 404: {"model": ApiError}, 409: {"model": ApiError}, 422: {"model": ApiError},
           429: {"model": ApiError}}


class _LoginInTheDocs(HTTPBasic):
    """The login as the API's description shows it, so that its docs page offers it. It reads nothing: ApiDoor
    has checked the credentials before the body was read (and, unlike FastAPI's check, accepts UTF-8 ones)."""

    async def __call__(self, request: HTTPConnection) -> None:  # type: ignore[override]
        return None


LOGIN_IN_THE_DOCS = _LoginInTheDocs(scheme_name="login", description="One of the app's --auth users and its password.")


def build_api(service: GenerationService, settings: Settings, guard: LoginGuard | None = None,
              loras: LoraFolder | None = None) -> FastAPI:
    """The API over ``service`` and its queue, with the app's ``settings``' logins,
    upload limit and output folder. ``guard``: the app's login checker, shared with the page so that failed
    logins back off across both (default: one for ``settings.auth``). ``loras``: the LoRA folder, shared with the
    page (default: the settings' folder)."""
    store = service.store
    # No ReDoc page: its bundle fetches a logo from the internet; Swagger UI's loads nothing from outside.
    api = FastAPIOffline(title="FramePack job API", version="1", static_url=DOCS_ASSETS, redoc_url=None,
                         swagger_ui_parameters={"validatorUrl": None},  # the validator badge is an external host
                         description="Submit image-to-video jobs, follow them, download the videos. " + (__doc__ or ""))
    guard = guard if guard is not None else LoginGuard(settings.auth)
    output_dir = Path(settings.output_dir).resolve()
    lora_folder = loras if loras is not None else LoraFolder(settings.lora_folder)
    hide_paths = PathHider(default_hidden_folders(output_dir, store.root, lora_folder.folder))
    install_error_handlers(api, hide_paths)
    status = JobStatuses(service, output_dir, hide_paths).of
    limit_text = f"{settings.max_file_size_mb:g} MB"
    api.add_middleware(ApiDoor, guard=guard, max_body_bytes=settings.max_file_size_bytes + BODY_ALLOWANCE_BYTES,
                       limit_text=limit_text, open_paths=OPEN_PATHS, open_prefixes=(DOCS_ASSETS + "/",),
                       body_limits={"/batches": settings.max_file_size_bytes * MAX_BATCH_IMAGES + BODY_ALLOWANCE_BYTES})

    def viewer(request: Request, _: Annotated[None, Depends(LOGIN_IN_THE_DOCS)]) -> Viewer:
        login = request.scope.get(LOGIN_SCOPE_KEY)
        if settings.logins_on and login is None:  # only if the door was bypassed: refuse rather than guess
            raise ApiRefusal(401, "Log in with one of the app's --auth users (HTTP Basic).",
                             "Send the user name and password as HTTP Basic credentials.")
        return Viewer.of(login, logins_on=settings.logins_on, admins=settings.admins)

    Who = Annotated[Viewer, Depends(viewer)]

    def damaged_and_visible(job_id: str, who: Viewer) -> bool:
        return any(row.id == job_id for row in store.damaged(owner=who.owner_filter))

    def own_job(job_id: str, who: Viewer) -> QueuedJob:
        try:
            job = store.get(job_id)
        except QueueError:
            if damaged_and_visible(job_id, who):
                raise  # 409: its hint says to delete it
            raise ApiRefusal(404, f"There is no job {job_id}.", NO_SUCH_JOB_HINT) from None
        if not who.may_see(job.owner):
            # Not 403: whether an id is someone else's is not revealed.
            raise ApiRefusal(404, f"There is no job {job_id}.", NO_SUCH_JOB_HINT)
        return job

    @api.post("/jobs", status_code=201, response_model=JobStatus,
              responses={**_ERRORS, 413: {"model": ApiError}, 507: {"model": ApiError}}, summary="Submit a job")
    async def submit(request: Request, who: Who,
                     image: Annotated[UploadFile | None, File(description=(
                         "The input image (PNG, JPEG, WebP, ...); optional with extend_video (then: the clip's "
                         "last frame)."))] = None,
                     settings_json: Annotated[str | None, Form(alias="settings", description=(
                         "Generation settings as a JSON object; any of: " + ", ".join(SETTINGS_FIELDS) +
                         ', and loras: [{"name": "style.safetensors", "weight": 0.8}], files of GET /loras'))] = None,
                     spec_json: Annotated[str | None, Form(alias="spec", description=(
                         "A whole job spec (JSON); its image_sha256 must be the uploaded image's."))] = None,
                     extend_video: Annotated[UploadFile | None, File(description=(
                         "A clip to extend (mp4, mov, webm); see extend_output and context_frames."))] = None,
                     end_image: Annotated[UploadFile | None, File(description=(
                         "Original model: the image the video ends at (settings end_strength, "
                         "end_image_embedding_weight)."))] = None,
                     keyframe_images: Annotated[list[UploadFile] | None, File(description=(
                         "Original model: keyframe images, one for each time in keyframe_seconds."))] = None,
                     keyframe_seconds: Annotated[str | None, Form(description=(
                         "The keyframe images' times in seconds, as a JSON list in their order, e.g. [1.5, 3]."
                     ))] = None,
                     ) -> JobStatus:
        uploads = store.root / "uploads"
        story_sent = ([end_image] if end_image is not None else []) + list(keyframe_images or [])
        stored_files: list[Path] = []
        try:
            clip = None
            if extend_video is not None:
                clip = await _store_upload(extend_video, uploads, settings.max_file_size_bytes, limit_text, "clip")
                stored_files.append(clip)
            if image is None and clip is None:
                raise InvalidInputError("image", "is required", "Send the start image, or a clip to extend.")
            # Errors about the temporary copies name the files the client sent.
            request.state.show_as = {} if clip is None else {str(clip): _sent_name(extend_video, "the uploaded clip")}
            path = await _store_upload(image, uploads, settings.max_file_size_bytes, limit_text) \
                if image is not None else await asyncio.to_thread(_clip_last_frame, clip, uploads)
            stored_files.append(path)
            request.state.show_as[str(path)] = _sent_name(image, "the uploaded image")
            story_paths = []
            for upload in story_sent:
                story_paths.append(await _store_upload(upload, uploads, settings.max_file_size_bytes, limit_text))
                stored_files.append(story_paths[-1])
                request.state.show_as[str(story_paths[-1])] = _sent_name(upload, "the uploaded image")
            story = story_uploads(story_paths[0] if end_image is not None else None,
                                  story_paths[end_image is not None:], keyframe_seconds)
            if clip is not None:
                story["extend_video"] = clip
            job_request = await asyncio.to_thread(_request, path, settings_json, spec_json, lora_folder, story)
            job_id = await asyncio.to_thread(service.submit, job_request, who.submitter,
                                             max_pending=settings.max_pending_per_user)
        finally:
            for stored in stored_files:
                stored.unlink(missing_ok=True)  # the queue keeps its own copies
        return status(store.get(job_id))

    @api.get("/jobs", response_model=JobList, responses=_ERRORS, summary="List your jobs, a page at a time")
    def list_jobs(who: Who,
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Jobs per page.")] = DEFAULT_PAGE_SIZE,
                  offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Jobs to skip.")] = 0) -> JobList:
        rows = store.rows(owner=who.owner_filter)  # one read for the page, the total and the damaged rows
        readable = [row for row in rows if isinstance(row, QueuedJob)]
        total = len(readable)
        return JobList(jobs=[status(job) for job in readable[offset:offset + limit]], total=total,
                       next_offset=offset + limit if offset + limit < total else None,
                       damaged=[DamagedJobRow(id=row.id, reason=hide_paths(row.reason))
                                for row in rows if isinstance(row, DamagedJob)])

    @api.get("/jobs/{job_id}", response_model=JobStatus, responses=_ERRORS, summary="A job's status and progress")
    def get_job(job_id: JobId, who: Who) -> JobStatus:
        return status(own_job(job_id, who))

    @api.post("/jobs/{job_id}/cancel", response_model=JobStatus, responses=_ERRORS, summary="Cancel a job")
    def cancel_job(job_id: JobId, who: Who) -> JobStatus:
        job = own_job(job_id, who)
        if not service.cancel(job.id, who):
            store.cancel(job.id)  # not in this process's memory: the store decides (409 if ended)
        return status(store.get(job.id))

    @api.patch("/jobs/{job_id}", response_model=JobStatus, responses=_ERRORS, summary="Edit a pending job")
    def edit_job(job_id: JobId, who: Who,
                 changes: Annotated[dict[str, Any], Body(description="Settings to change, e.g. {\"seed\": 7}.")]
                 ) -> JobStatus:
        service.edit(own_job(job_id, who).id, changes, who)
        return status(store.get(job_id))

    @api.post("/jobs/{job_id}/retry", response_model=JobStatus, responses=_ERRORS, summary="Queue a job again")
    def retry_job(job_id: JobId, who: Who) -> JobStatus:
        service.retry(own_job(job_id, who).id, who)
        return status(store.get(job_id))

    @api.post("/jobs/{job_id}/reroll", status_code=201, response_model=JobStatus, responses=_ERRORS,
              summary="Re-roll a job from a section, as a new job")
    def reroll_job(job_id: JobId, who: Who, body: RerollRequest) -> JobStatus:
        job = own_job(job_id, who)
        try:
            new_id = service.reroll(job.id, body.from_section, seed=body.seed, prompt=body.prompt, viewer=who,
                                    max_pending=settings.max_pending_per_user)
        except KeyError:
            raise ApiRefusal(404, f"There is no job {job_id}.", NO_SUCH_JOB_HINT) from None
        return status(store.get(new_id))

    @api.delete("/jobs/{job_id}", status_code=204, responses=_ERRORS,
                summary="Forget an ended, pending or damaged job")
    def delete_job(job_id: JobId, who: Who) -> None:
        try:
            own_job(job_id, who)
        except QueueError:  # a damaged row the viewer may see: deleting it is what its hint asks for
            pass
        service.delete(job_id, who)

    @api.get("/jobs/{job_id}/video", response_class=FileResponse, responses=_ERRORS,
             summary="Download the job's video (the finished one, else the partial one of an earlier attempt)")
    def video(job_id: JobId, who: Who) -> FileResponse:
        job = own_job(job_id, who)
        path = served_video(job, output_dir)
        if path is None:
            raise ApiRefusal(404, f"Job {job_id} has no video yet ({job.state.value}).",
                             "Wait until it has finished (GET /jobs/{id} says when), or retry it if it failed.")
        return FileResponse(path, media_type="video/mp4", filename=path.name)

    @api.get("/health", response_model=Health, responses=_ERRORS, summary="Whether the worker runs jobs")
    def health(who: Who) -> Health:
        report = service.health().to_dict()
        # Which worker runs which job: a job another user owns is only "busy" (its id is not revealed).
        report["workers"] = [
            {"name": worker["name"], "busy": worker["job_id"] is not None, "retired": worker["retired"],
             "job_id": worker["job_id"] if worker["job_id"] is not None and _sees_job(worker["job_id"], who)
             else None}
            for worker in report["workers"]]
        return Health(worker={name: hide_paths(value) if isinstance(value, str) else value
                              for name, value in report.items()})

    def _sees_job(job_id: str, who: Viewer) -> bool:
        try:
            own_job(job_id, who)
        except (ApiRefusal, QueueError):
            return False
        return True

    @api.get("/jobs/{job_id}/events", responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
             summary="Follow a job: server-sent events")
    async def events(job_id: JobId, who: Who) -> StreamingResponse:
        own_job(job_id, who)

        async def stream():
            version = -1
            quiet_for = 0.0
            while True:
                try:
                    snapshot = await asyncio.to_thread(service.wait_for_change, job_id, version, 1.0)
                except KeyError:  # not in this process's memory: report the stored state once
                    yield _sse("status", status(store.get(job_id)).model_dump_json())
                    return
                if snapshot.version != version:
                    version, quiet_for = snapshot.version, 0.0
                    yield _sse("status", status(store.get(job_id), snapshot).model_dump_json())
                    if snapshot.state.done:
                        return
                else:
                    quiet_for += 1.0
                    if quiet_for >= SSE_HEARTBEAT_S:
                        quiet_for = 0.0
                        yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    add_batch_routes(api, service, viewer, status,
                     lambda upload: _store_upload(upload, store.root / "uploads", settings.max_file_size_bytes,
                                                  limit_text),
                     lambda image, settings_json: _request(image, settings_json, None, lora_folder),
                     settings.max_pending_per_user, {**_ERRORS, 413: {"model": ApiError}, 507: {"model": ApiError}})
    add_lora_routes(api, lora_folder, viewer, _ERRORS)
    return api


async def _store_upload(image: UploadFile, folder: Path, limit: int, limit_text: str, what: str = "image") -> Path:
    """The uploaded ``what`` (image, clip), copied to a new file in ``folder`` for the caller to delete; 413 past ``limit`` bytes,
    507 when the disk is full (nothing is left behind either way)."""
    suffix = Path(image.filename or "").suffix.lower()
    suffix = suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ".img"
    path = None
    try:
        folder.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=suffix, delete=False) as handle:
            path = Path(handle.name)
            size = 0
            while chunk := await image.read(UPLOAD_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise ApiRefusal(413, f"The {what} is larger than the app's limit of {limit_text}.",
                                     f"Send a smaller {what}, or start the app with a higher --max-file-size-mb.")
                handle.write(chunk)
    except BaseException as error:
        if path is not None:
            path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            _raise_if_disk_full(error, f"the uploaded {what}")
        raise
    return path


def _sent_name(upload: UploadFile | None, default: str) -> str:
    return Path(upload.filename or "").name or default if upload is not None else default


def _clip_last_frame(clip: Path, folder: Path) -> Path:
    from framepack_core.media.video_input import write_last_frame

    return write_last_frame(clip, folder)


def _request(image: Path, settings_json: str | None, spec_json: str | None, loras: LoraFolder,
             story: dict[str, Any] | None = None) -> GenerationRequest:
    """The request of a submission: its ``settings`` (LoRAs by name in ``loras``) or its ``spec`` (LoRAs by
    SHA-256, found in ``loras``), with the uploads in ``story``."""
    story = story or {}
    if spec_json is not None and settings_json is not None:
        raise InvalidInputError("spec", "give either settings or a spec, not both")
    if spec_json is not None:
        spec = JobSpec.from_json(spec_json)
        spec.check_image(image)
        # A spec names its other input files by SHA-256: the uploads are matched to them so.
        files = JobSpec.input_files_of(GenerationRequest(image=image, **story)) | spec_lora_files(loras, spec)
        return spec.request(image, files=files)
    try:
        values = json.loads(settings_json) if settings_json else {}
    except ValueError as error:
        raise InvalidInputError("settings", f"is not valid JSON ({error})") from None
    except RecursionError:  # "[[[[...]]]]" nested deeper than the parser's stack
        raise InvalidInputError("settings", "is nested too deeply to be an object of settings",
                                'Send a flat JSON object, e.g. {"seed": 7}.') from None
    if not isinstance(values, dict):
        raise InvalidInputError("settings", "must be a JSON object of generation settings")
    values = settings_in_current_names(values)  # use_teacache from clients written before cache existed
    for name in values:
        if name not in SETTINGS_FIELDS and name != "loras":
            raise InvalidInputError(name, "is not a generation setting",
                                    f"Settings are: {', '.join(SETTINGS_FIELDS)}, loras.")
    values = lora_settings(loras, values)
    try:
        return GenerationRequest(image=image, **values, **story).validated()
    except TypeError as error:
        raise InvalidInputError("settings", str(error)) from None


def _raise_if_disk_full(error: OSError, what: str) -> None:
    """A full disk becomes the API's 507 with its hint; the caller re-raises any other failure as it was."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(what) from error


def _sse(event: str, data: str) -> str:
    return f"event: {event}\ndata: {data}\n\n"

