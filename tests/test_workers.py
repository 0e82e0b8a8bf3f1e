"""Several local workers on one queue: a worker process per device, jobs side by side, a dead worker's job resumed
bit-identically from its last finished section."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from framepack_core.cli import main as cli
from framepack_core.events import Notice, SectionFinished, WorkerLost
from framepack_core.jobs.queue import JobQueue, JobState
from framepack_core.jobs.runner import QueueRunner
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.media.video_io import read_video_frames
from framepack_core.request import GenerationRequest
from framepack_core.workers.pool import WorkerPool
from framepack_core.workers.process import ProcessWorker
from framepack_core.workers.recipe import EngineRecipe, worker_devices
from framepack_core.workers.remote import unique_names

# 4 sections of 3 steps: long enough to kill a worker inside its third section.
JOB = {"latent_window_size": 3, "steps": 3, "resolution": 64, "seconds": 1.6, "cache": "none"}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("workers") / "in.png"
    y, x = np.mgrid[0:200, 0:300]
    Image.fromarray(np.stack([x % 256, (y * 3) % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return path


def _submit(queue: JobQueue, image: Path, seed: int, prompt: str = "a cat walks") -> str:
    request = GenerationRequest(image=image, prompt=prompt, seed=seed, **JOB)
    return queue.submit(JobSpec.from_request(request, file_sha256(image)), image).id


def _latents(queue: JobQueue, job_id: str) -> torch.Tensor:
    return load_file(str(queue.job_dir(job_id) / "checkpoint.safetensors"))["history_latents"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_models_dir, image, tmp_path_factory) -> dict[int, tuple[torch.Tensor, np.ndarray]]:
    """Seeds 1 and 2 run one after the other in this process: what the workers must reproduce."""
    folder = tmp_path_factory.mktemp("one-process")
    queue = JobQueue.for_output_dir(folder)
    ids = {seed: _submit(queue, image, seed) for seed in (1, 2)}
    engine = EngineRecipe(device="cpu", models_dir=tiny_models_dir, offline=True).build()
    done = QueueRunner(queue, engine, folder).run_pending()
    assert [job.state for job in done] == [JobState.FINISHED] * 2
    return {seed: (_latents(queue, job_id), read_video_frames(queue.get(job_id).output))
            for seed, job_id in ids.items()}


def test_two_cpu_workers_run_two_queued_jobs_at_the_same_time(tiny_models_dir, image, uninterrupted, tmp_path,
                                                               capfd):
    queue = JobQueue.for_output_dir(tmp_path)
    ids = {seed: _submit(queue, image, seed) for seed in (1, 2)}

    code = cli.main(["jobs", "--output-dir", str(tmp_path), "run", "--devices", "cpu,cpu", "--device", "cpu",
                     "--models-dir", str(tiny_models_dir), "--offline"])
    out, err = capfd.readouterr()  # the worker processes' output too: they write to the same terminal
    assert code == cli.EXIT_OK, err
    assert "Loading weights" not in err, "two workers' loading bars would interleave line by line"

    first, second = (queue.get(ids[seed]) for seed in (1, 2))
    assert {first.worker, second.worker} == {"cpu#1", "cpu#2"}
    # Side by side: each started before the other finished.
    assert first.started_at < second.ended_at and second.started_at < first.ended_at, (first, second)
    assert f"section 1/4 done on {first.worker}" in err
    # Each job's start is told once, naming its worker, before its first section.
    for job in (first, second):
        started = f"{job.id}: started on {job.worker}\n"
        assert err.count(started) == 1 and err.index(started) < err.index(f"{job.id}: section 1/4 done"), err
    for seed, job in ((1, first), (2, second)):
        assert job.state == JobState.FINISHED and f"{job.id} finished: {job.output}" in out
        assert torch.equal(_latents(queue, job.id), uninterrupted[seed][0])
        assert np.array_equal(read_video_frames(job.output), uninterrupted[seed][1])


def test_a_killed_worker_s_job_resumes_on_a_worker_bit_identically(tiny_models_dir, image, uninterrupted, tmp_path):
    queue = JobQueue.for_output_dir(tmp_path)
    job_id = _submit(queue, image, seed=1)
    recipe = EngineRecipe(device="cpu", models_dir=tiny_models_dir, offline=True)
    workers = [ProcessWorker(recipe, name) for name in ("cpu#1", "cpu#2")]
    by_name = {worker.name: worker for worker in workers}
    killed: list[str] = []
    seen: list[object] = []

    def kill_at_section_2(job, event) -> None:
        seen.append(event)
        if isinstance(event, SectionFinished) and event.section == 2 and not killed:
            killed.append(job.worker)
            os.kill(by_name[job.worker].pid, signal.SIGKILL)  # while it samples section 3

    pool = WorkerPool(queue, workers, tmp_path)
    try:
        done = pool.run_pending(kill_at_section_2)
    finally:
        pool.close()

    job = queue.get(job_id)
    assert [ended.id for ended in done] == [job_id] and job.state == JobState.FINISHED
    assert job.attempts == 2
    lost = [event for event in seen if isinstance(event, WorkerLost)]
    assert [event.worker for event in lost] == killed and "exited with code -9" in lost[0].message
    resumed = [event.message for event in seen if isinstance(event, Notice) and "Resuming" in event.message]
    # Killed while it sampled section 3; on a loaded machine section 3 may just have been checkpointed.
    assert resumed and re.match(r"Resuming from section [34] of 4: [23] finished section\(s\) kept", resumed[0])
    assert torch.equal(_latents(queue, job_id), uninterrupted[1][0])
    assert np.array_equal(read_video_frames(job.output), uninterrupted[1][1])


def test_a_cancel_reaches_the_job_in_a_worker_process(tiny_models_dir, image, tmp_path):
    queue = JobQueue.for_output_dir(tmp_path)
    _submit(queue, image, seed=3)
    pool = WorkerPool(queue, [ProcessWorker(EngineRecipe(device="cpu", models_dir=tiny_models_dir, offline=True))],
                      tmp_path)

    def cancel_after_section_1(job, event) -> None:
        if isinstance(event, SectionFinished) and event.section == 1:
            queue.cancel(job.id)  # as another process would: seen at the worker's next step

    try:
        done = pool.run_pending(cancel_after_section_1)
    finally:
        pool.close()
    assert [job.state for job in done] == [JobState.CANCELLED]
    assert done[0].sections_done < 4 and done[0].partial is not None and done[0].partial.is_file()


def test_worker_devices_are_named_apart_and_bad_lists_are_refused_with_the_flag(tmp_path, capsys):
    assert worker_devices("cpu,cpu") == ["cpu", "cpu"]
    assert unique_names(["cpu", "cpu", "cuda:0"]) == ["cpu#1", "cpu#2", "cuda:0"]
    for devices, said in (("cpu,,cpu", "is not a list of devices"), ("cuda:7", "sees no CUDA GPU"),
                          ("cpu,auto", "auto stands alone"), ("tpu", "unknown device")):
        code = cli.main(["jobs", "--output-dir", str(tmp_path), "run", "--devices", devices])
        err = capsys.readouterr().err
        assert code == cli.EXIT_BAD_INPUT and err.startswith("error: --devices: ") and said in err, err
        assert "Traceback" not in err


def test_local_workers_each_plan_for_their_share_of_the_ram(tiny_models_dir, image):
    from framepack_core.memory.hardware import FakeHardwareProbe, fake_hardware
    from framepack_core.memory.job_planning import JobPlanner
    from framepack_core.memory.plan import GIB
    from framepack_core.models.loading import ModelSource
    from framepack_core.workers.process import local_workers

    workers = local_workers(EngineRecipe(models_dir=tiny_models_dir, offline=True), "cpu,cpu")
    assert [(w.name, w.recipe.device, w.recipe.ram_share) for w in workers] == [("cpu#1", "cpu", 0.5),
                                                                              ("cpu#2", "cpu", 0.5)]
    assert workers[0].recipe.build().planner.ram_share == 0.5

    # Both load at once and each sees 32 GiB of 32 free: each plans for 16.
    probe = FakeHardwareProbe(fake_hardware(8, 32, device_type="cuda"))
    source = ModelSource(models_dir=tiny_models_dir, offline=True)
    request = GenerationRequest(image=image, **JOB)
    alone = JobPlanner(source, "cuda", probe=probe).plan(request, None)
    shared = JobPlanner(source, "cuda", probe=probe, ram_share=0.5).plan(request, None)
    assert alone.ram_budget_bytes - shared.ram_budget_bytes == 16 * GIB
