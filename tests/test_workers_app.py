"""The app with several workers (``launch.py --devices``): jobs side by side, each job naming its worker on the
page and in the REST API (only to who may see the job), a killed worker's job resumed bit-identically."""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from app.api.routes import build_api
from app.service.generation import GenerationService
from app.service.job_status import JobState
from app.settings import Settings
from app.ui.render import queue_table_rows, render_progress, workers_markdown
from framepack_core.jobs.queue import JobQueue
from framepack_core.jobs.runner import QueueRunner
from framepack_core.media.video_io import read_video_frames
from framepack_core.workers.process import ProcessWorker
from framepack_core.workers.recipe import EngineRecipe
from tests.test_http_api import png_bytes

USERS = (("ann", "ann-secret-1"), ("bob", "bob-secret-2"))
ANN, BOB = USERS
# 4 sections of 3 steps, as tests/test_workers.py runs them.
JOB = {"latent_window_size": 3, "steps": 3, "resolution": 64, "seconds": 1.6, "cache": "none", "prompt": "a cat"}


def _submit(client: TestClient, auth: tuple[str, str], seed: int) -> str:
    import json

    response = client.post("/jobs", files={"image": ("in.png", png_bytes(), "image/png")},
                           data={"settings": json.dumps({**JOB, "seed": seed})}, auth=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _wait(service: GenerationService, job_id: str, states: tuple[JobState, ...], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while service.snapshot(job_id).state not in states:
        assert time.monotonic() < deadline, service.snapshot(job_id)
        time.sleep(0.05)


@pytest.fixture()
def app_with_two_workers(tiny_models_dir, tmp_path):
    recipe = EngineRecipe(device="cpu", models_dir=tiny_models_dir, offline=True)
    workers = [ProcessWorker(recipe, name) for name in ("cpu#1", "cpu#2")]
    out = tmp_path / "outputs"
    service = GenerationService(recipe.build, out, queue=JobQueue.for_output_dir(out), workers=workers)
    client = TestClient(build_api(service, Settings(output_dir=out, auth=USERS)))
    service.start()
    yield client, service, workers
    service.stop()


def test_the_app_runs_a_job_per_worker_at_once_and_says_which_worker_runs_which(app_with_two_workers,
                                                                                  tiny_models_dir, tmp_path):
    client, service, _ = app_with_two_workers
    ann_job, bob_job = _submit(client, ANN, seed=5), _submit(client, BOB, seed=6)
    for job_id in (ann_job, bob_job):
        _wait(service, job_id, (JobState.RUNNING,))
    running = {job_id: service.snapshot(job_id).worker for job_id in (ann_job, bob_job)}
    assert sorted(running.values()) == ["cpu#1", "cpu#2"], "both run at once, one per worker"

    # Each user sees the worker of their own job; the other worker is only busy to them.
    ann_status = client.get(f"/jobs/{ann_job}", auth=ANN).json()
    assert ann_status["worker"] == running[ann_job]
    workers_seen = {w["name"]: w for w in client.get("/health", auth=ANN).json()["worker"]["workers"]}
    assert workers_seen[running[ann_job]]["job_id"] == ann_job
    assert workers_seen[running[bob_job]] == {"name": running[bob_job], "busy": True, "job_id": None,
                                              "retired": False}
    assert client.get(f"/jobs/{ann_job}", auth=BOB).status_code == 404
    # The page: the progress panel and the Queue tab name the worker.
    assert f"on <b>{running[ann_job]}</b>" in render_progress(service.snapshot(ann_job))
    rows = {row[1]: row for row in queue_table_rows(service.queue_rows())}
    assert rows[ann_job][2] == f"running on {running[ann_job]}"
    assert workers_markdown(service.health()).endswith("cpu#1 busy · cpu#2 busy")

    for job_id in (ann_job, bob_job):
        _wait(service, job_id, (JobState.FINISHED,))
    stored = [service.store.get(job_id) for job_id in (ann_job, bob_job)]
    assert stored[0].started_at < stored[1].ended_at and stored[1].started_at < stored[0].ended_at

    # The same jobs, one after the other in one process, give the same videos.
    single = tmp_path / "single"
    queue = JobQueue.for_output_dir(single)
    for job in stored:
        queue.submit(job.spec, job.image)
    QueueRunner(queue, EngineRecipe(device="cpu", models_dir=tiny_models_dir, offline=True).build(),
                single).run_pending()
    alone = {job.spec.digest: job.output for job in queue.list(states=(JobState.FINISHED,))}
    assert len(alone) == 2
    for job in stored:
        assert np.array_equal(read_video_frames(job.output), read_video_frames(alone[job.spec.digest]))


def test_a_worker_killed_mid_job_in_the_app_gives_the_job_back_and_it_resumes_bit_identically(
        app_with_two_workers, tiny_models_dir, tmp_path):
    client, service, workers = app_with_two_workers
    job_id = _submit(client, ANN, seed=7)
    deadline = time.monotonic() + 120
    while (snapshot := service.snapshot(job_id)).section is None or snapshot.section < 3:
        assert time.monotonic() < deadline and not snapshot.state.done, snapshot
        time.sleep(0.02)
    victim = next(worker for worker in workers if worker.name == snapshot.worker)
    os.kill(victim.pid, signal.SIGKILL)  # sampling section 3: two sections are checkpointed

    _wait(service, job_id, (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED))
    snapshot = service.snapshot(job_id)
    stored = service.store.get(job_id)
    assert snapshot.state == JobState.FINISHED and stored.attempts == 2, snapshot
    assert any("stopped while running the job" in notice for notice in snapshot.notices)
    # Killed while it sampled section 3; on a loaded machine section 3 may just have been checkpointed.
    assert any(re.match(r"Resuming from section [34] of 4", notice) for notice in snapshot.notices)

    alone = tmp_path / "alone"
    queue = JobQueue.for_output_dir(alone)
    alone_id = queue.submit(stored.spec, stored.image).id
    QueueRunner(queue, EngineRecipe(device="cpu", models_dir=tiny_models_dir, offline=True).build(),
                alone).run_pending()
    latents = [load_file(str(q.job_dir(j) / "checkpoint.safetensors"))["history_latents"]
               for q, j in ((service.store, job_id), (queue, alone_id))]
    assert torch.equal(*latents)
    assert np.array_equal(read_video_frames(stored.output), read_video_frames(queue.get(alone_id).output))
    assert service.health().problem is None, "one loss does not retire a worker"
    said = service.free_memory()
    assert said.startswith("Stopped ") and "worker(s) (cpu#" in said and all(w.pid is None for w in workers), said


def test_with_several_workers_a_tab_may_start_another_job_while_its_own_runs(app_with_two_workers):
    from app.service.job_status import JobSnapshot
    from app.service.outputs import ServedFiles
    from app.ui.streams import first_frame

    _, service, _ = app_with_two_workers
    running = JobSnapshot(job_id="j", state=JobState.RUNNING, request=None, worker="cpu#1")
    served = ServedFiles()
    try:
        assert first_frame(running, True, served, one_at_a_time=True).start["interactive"] is False
        assert first_frame(running, True, served, one_at_a_time=False).start["interactive"] is True
    finally:
        served.close()
    assert service.worker_count == 2
    finished = JobSnapshot(job_id="j", state=JobState.FINISHED, request=None, worker="cpu#1")
    assert "<b>Finished</b> on <b>cpu#1</b>" in render_progress(finished)


def test_a_job_goes_to_the_first_free_worker_in_the_order_given():
    from types import SimpleNamespace

    from app.service.worker_slots import WorkerSlot, WorkerSlotsMixin

    first, second, third = (WorkerSlot(worker=SimpleNamespace(name=name)) for name in ("cuda:0", "cuda:1", "cuda:2"))
    service = SimpleNamespace(_slots=[first, second, third])

    def may_claim(slot: WorkerSlot) -> bool:
        return WorkerSlotsMixin._may_claim(service, slot)

    for slot in (first, second, third):
        slot.waiting = True
    # Whichever thread the news wakes first, only the first waiting worker claims.
    assert [may_claim(slot) for slot in (third, second, first)] == [False, False, True]
    first.waiting = False  # it runs a job now
    assert [may_claim(slot) for slot in (second, third)] == [True, False]
    second.releasing = True  # another thread frees its memory: it takes nothing meanwhile, the next one does
    assert [may_claim(slot) for slot in (second, third)] == [False, True]
