"""The job API's batches (under ``/api/v1``, beside the job routes of ``app.api.routes``):

    POST   /batches                 multipart: several ``images``, ``prompts`` (repeated, one prompt each) and
                                    ``seeds`` ("1,2,3") or ``seed_count``, and ``settings`` (JSON) for the rest:
                                    one job per image x prompt x seed, all checked before any is queued
    GET    /batches                 your batches and how many of their jobs are in each state
    GET    /batches/{id}            one batch and the status of each of its jobs
    POST   /batches/{id}/cancel     cancel its waiting jobs and stop its running one

With logins a user sees and cancels only their own batches' jobs (others' batch ids answer 404), and a batch that
would take the user past ``--max-pending-per-user`` waiting jobs is refused (429) before any of it is queued.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, some of them local to
# ``add_batch_routes``.
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from app.access import Viewer
from app.api.errors import ApiRefusal
from app.api.status import JobStatus
from app.service.batches import batch_of, cancel_batch, queue_batch, summary_of, visible_batches
from app.service.generation import GenerationService
from framepack_core.errors import InvalidInputError
from framepack_core.jobs.batch import BatchSummary, expand_batch, parse_seeds, seed_run
from framepack_core.jobs.queue import QueuedJob
from framepack_core.request import GenerationRequest

BATCH_ID_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
# Images one batch request may carry; the request's body may be this many uploads of the largest allowed size.
MAX_BATCH_IMAGES = 32
NO_SUCH_BATCH_HINT = "Check the id: GET /batches lists your batches."

BatchId = Annotated[str, PathParam(pattern=BATCH_ID_PATTERN, description="The batch's id, as returned on submit.")]


class BatchCounts(BaseModel):
    batch_id: str = Field(description="The batch's id.")
    total: int = Field(description="Its jobs that you see.")
    counts: dict[str, int] = Field(description="Its jobs per state (queued, running, finished, failed, cancelled).")
    summary: str = Field(description='In words: "batch 3f2a91c0: 6 jobs, 2 done, 4 waiting".')


class BatchStatus(BatchCounts):
    jobs: list[JobStatus] = Field(description="Each job's status, in the order they were queued.")


class BatchList(BaseModel):
    batches: list[BatchCounts]


StoreUpload = Callable[[UploadFile], Awaitable[Path]]
RequestOf = Callable[[Path, str | None], GenerationRequest]


def add_batch_routes(api: FastAPI, service: GenerationService, viewer: Callable[..., Viewer],
                     status: Callable[[QueuedJob], JobStatus], store_upload: StoreUpload, request_of: RequestOf,
                     max_pending: int | None, errors: dict[int | str, dict[str, Any]]) -> None:
    """The batch routes on ``api``: ``viewer`` is the routes' login dependency, ``status`` a job's answer,
    ``store_upload`` copies an upload to a temporary file (its limits and errors are the job route's),
    ``request_of(image, settings_json)`` the job route's request from its ``settings``."""
    Who = Annotated[Viewer, Depends(viewer)]

    def answer(jobs: list[QueuedJob]) -> BatchStatus:
        jobs = sorted(jobs, key=lambda job: job.created_at)
        return BatchStatus(**_counts(summary_of(jobs)).model_dump(), jobs=[status(job) for job in jobs])

    def visible(batch_id: str, who: Viewer) -> list[QueuedJob]:
        try:
            return batch_of(service, batch_id, who)
        except InvalidInputError:
            raise ApiRefusal(404, f"There is no batch {batch_id}.", NO_SUCH_BATCH_HINT) from None

    @api.post("/batches", status_code=201, response_model=BatchStatus, responses=errors,
              summary="Submit a batch: one job per image x prompt x seed")
    async def submit_batch(
            request: Request, who: Who,
            images: Annotated[list[UploadFile], File(description=f"The start images (up to {MAX_BATCH_IMAGES}).")],
            prompts: Annotated[list[str] | None, Form(description=(
                "The prompts, one per field (repeat the field); default: the settings' prompt."))] = None,
            seeds: Annotated[str | None, Form(description="Seeds, e.g. 1,2,3; default: the settings' seed.")] = None,
            seed_count: Annotated[int | None, Form(description=(
                "Instead of seeds: this many seeds counting up from the settings' seed."))] = None,
            settings_json: Annotated[str | None, Form(alias="settings", description=(
                "Every other generation setting, as a JSON object (as POST /jobs takes it)."))] = None,
    ) -> BatchStatus:
        if len(images) > MAX_BATCH_IMAGES:
            raise InvalidInputError("images", f"holds {len(images)} images; a batch takes at most "
                                    f"{MAX_BATCH_IMAGES}", "Split the images into several batches.")
        if seeds is not None and seed_count is not None:
            raise InvalidInputError("seeds", "give seeds or seed_count, not both")
        paths: list[Path] = []
        request.state.show_as = {}
        try:
            for upload in images:
                path = await store_upload(upload)
                paths.append(path)
                request.state.show_as[str(path)] = Path(upload.filename or "").name or "an uploaded image"
            base = request_of(paths[0], settings_json)
            seed_list = (parse_seeds(seeds) if seeds is not None
                         else seed_run(base.seed, seed_count) if seed_count is not None else [])
            names = [request.state.show_as[str(path)] for path in paths]
            jobs = await asyncio.to_thread(expand_batch, base, paths, [p for p in prompts or [] if p.strip()],
                                           seed_list, seed_field="seeds" if seeds is not None else "seed_count",
                                           image_names=names)
            batch = await asyncio.to_thread(queue_batch, service, jobs, who, max_pending)
        finally:
            for path in paths:
                path.unlink(missing_ok=True)  # the queue keeps its own copies
        return answer(batch_of(service, batch.batch_id, who))

    @api.get("/batches", response_model=BatchList, responses=errors, summary="List your batches")
    def list_batches(who: Who) -> BatchList:
        return BatchList(batches=[_counts(summary) for summary in visible_batches(service, who)])

    @api.get("/batches/{batch_id}", response_model=BatchStatus, responses=errors,
             summary="A batch and each of its jobs")
    def get_batch(batch_id: BatchId, who: Who) -> BatchStatus:
        return answer(visible(batch_id, who))

    @api.post("/batches/{batch_id}/cancel", response_model=BatchStatus, responses=errors,
              summary="Cancel a batch: its waiting jobs end, its running one stops after the current step")
    def cancel(batch_id: BatchId, who: Who) -> BatchStatus:
        visible(batch_id, who)
        return answer(cancel_batch(service, batch_id, who))


def _counts(summary: BatchSummary) -> BatchCounts:
    return BatchCounts(batch_id=summary.batch_id, total=summary.total, summary=summary.text(),
                       counts={state.value: count for state, count in summary.counts.items()})

