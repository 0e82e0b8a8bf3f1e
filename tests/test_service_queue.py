"""The app's job service on the persistent queue: jobs survive restarts, resume, and other processes' jobs run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.service.generation import GenerationService
from framepack_core.events import SectionFinished
from framepack_core.jobs.queue import JobQueue, JobState
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.media.video_io import probe_video
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

FAST = dict(latent_window_size=3, steps=3, resolution=64, seconds=0.8, cache="none")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("svc") / "in.png"
    y, x = np.mgrid[0:200, 0:300]
    Image.fromarray(np.stack([x % 256, y % 256, (x * y) % 256], -1).astype(np.uint8)).save(path)
    return path


class SlowEngine(FramePackEngine):
    """The real engine, pausing after each finished section so a test can act mid-job."""

    pause_s = 0.0

    def generate(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        for event in super().generate(*args, **kwargs):
            yield event
            if isinstance(event, SectionFinished):
                time.sleep(self.pause_s)


def _service(models_dir: Path, out: Path, pause_s: float = 0.0, start: bool = True) -> GenerationService:
    def factory() -> FramePackEngine:
        engine = SlowEngine(ModelStore(ModelSource(models_dir=models_dir), resolve_device_config("cpu")))
        engine.pause_s = pause_s
        return engine

    service = GenerationService(factory, out, queue=JobQueue.for_output_dir(out))
    if start:
        service.start()
    return service


def _wait(service, job_id, states=None, timeout=120):
    deadline = time.monotonic() + timeout
    snapshot = service.snapshot(job_id)
    while not (snapshot.state in states if states else snapshot.state.done):
        assert time.monotonic() < deadline, snapshot
        snapshot = service.wait_for_change(job_id, snapshot.version, timeout=1.0)
    return snapshot


def test_a_job_is_stored_run_and_marked_finished(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path)
    try:
        job_id = service.submit(GenerationRequest(image=image, prompt="stored", **FAST), owner="alice")
        snapshot = _wait(service, job_id)
        assert snapshot.state == JobState.FINISHED, snapshot.error
        row = service.store.get(job_id)
        assert row.state == JobState.FINISHED and row.owner == "alice" and row.output == snapshot.output_video
        assert probe_video(row.output).frame_count == 25
        assert [r.id for r in service.queue_rows(owner="alice")] == [job_id] and service.queue_rows(owner="bob") == []
    finally:
        service.stop()


def test_pending_jobs_survive_a_restart_and_run_when_the_app_starts_again(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path, start=False)
    ids = [service.submit(GenerationRequest(image=image, seed=n, **FAST)) for n in (1, 2)]
    service.stop()
    assert [r.state for r in JobQueue.for_output_dir(tmp_path).list()] == [JobState.QUEUED] * 2

    restarted = _service(tiny_models_dir, tmp_path)
    try:
        assert [restarted.snapshot(i).state for i in ids] != [JobState.CANCELLED] * 2
        for job_id in ids:
            assert _wait(restarted, job_id).state == JobState.FINISHED
    finally:
        restarted.stop()


def test_a_job_stopped_by_shutdown_resumes_from_its_last_section_after_a_restart(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path, pause_s=1.0)
    job_id = service.submit(GenerationRequest(image=image, **{**FAST, "seconds": 1.6}))
    deadline = time.monotonic() + 60
    while (service.snapshot(job_id).section or 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    service.stop()
    row = JobQueue.for_output_dir(tmp_path).get(job_id)
    assert row.state == JobState.QUEUED and row.sections_done >= 1, row

    restarted = _service(tiny_models_dir, tmp_path)
    try:
        snapshot = _wait(restarted, job_id)
        assert snapshot.state == JobState.FINISHED, snapshot.error
        assert any(n.startswith(f"Resuming from section {row.sections_done + 1} of 4") for n in snapshot.notices)
        assert probe_video(snapshot.output_video).frame_count == 49
    finally:
        restarted.stop()


def test_a_job_queued_by_another_process_runs_in_the_app(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path)
    try:
        other = JobQueue.for_output_dir(tmp_path)  # as `python -m framepack_core jobs submit` would
        spec = JobSpec.from_request(GenerationRequest(image=image, prompt="from the CLI", **FAST), file_sha256(image))
        job_id = other.submit(spec, image).id
        deadline = time.monotonic() + 60
        while other.get(job_id).state != JobState.FINISHED:
            assert time.monotonic() < deadline, other.get(job_id)
            time.sleep(0.2)
        # The runner stores the end, then tells the service: its snapshot follows a moment later.
        snapshot = _wait(service, job_id)
        assert snapshot.state == JobState.FINISHED, snapshot
    finally:
        service.stop()


def test_a_cancel_through_the_store_stops_the_running_job(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path, pause_s=0.5)
    try:
        job_id = service.submit(GenerationRequest(image=image, **{**FAST, "seconds": 1.6}))
        _wait(service, job_id, states=(JobState.RUNNING,))
        JobQueue.for_output_dir(tmp_path).cancel(job_id)  # another process asks
        snapshot = _wait(service, job_id)
        assert snapshot.state == JobState.CANCELLED
        assert service.store.get(job_id).state == JobState.CANCELLED
        service.retry(job_id)
        snapshot = _wait(service, job_id)
        assert snapshot.state == JobState.FINISHED and service.store.get(job_id).attempts == 2
    finally:
        service.stop()


def test_queue_order_can_be_changed_and_jobs_deleted_from_the_app(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path, start=False)
    try:
        a, b, c = (service.submit(GenerationRequest(image=image, seed=n, **FAST)) for n in (1, 2, 3))
        service.move(c, 1)
        assert service.queued_job_ids() == [c, a, b]
        assert service.snapshot(c).queue_position == 1 and service.snapshot(b).queue_position == 3
        service.delete(a)
        assert service.queued_job_ids() == [c, b] and [r.id for r in service.queue_rows()] == [c, b]
    finally:
        service.stop()
