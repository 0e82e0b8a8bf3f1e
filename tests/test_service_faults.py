"""The app's job service under faults: its worker survives errors, one process owns a queue, crashes leave no litter."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_service import _wait_done as wait_done

from app.access import Viewer
from app.service.generation import GenerationService
from framepack_core.jobs.queue import JobQueue, JobState
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

FAST = dict(latent_window_size=3, steps=3, resolution=64, seconds=0.8, cache="none")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image(gradient_image: Path) -> Path:
    return gradient_image


def make_service(models_dir: Path, out: Path) -> GenerationService:
    def factory() -> FramePackEngine:
        return FramePackEngine(ModelStore(ModelSource(models_dir=models_dir), resolve_device_config("cpu")))

    return GenerationService(factory, out, queue=JobQueue.for_output_dir(out))


def test_the_worker_survives_sqlite_errors_while_it_waits_and_shows_them(tiny_models_dir, image, tmp_path,
                                                                         monkeypatch):
    service = make_service(tiny_models_dir, tmp_path)
    real_claim = service.store.claim_next
    failures = {"left": 3}

    def flaky_claim(worker=None):  # noqa: ANN001, ANN202 - a disk I/O error while the disk is momentarily full
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real_claim(worker)

    monkeypatch.setattr(service.store, "claim_next", flaky_claim)
    service.start()
    try:
        deadline = time.monotonic() + 10
        while service.health().last_error is None:
            assert time.monotonic() < deadline, "the error is shown in the health report"
            time.sleep(0.05)
        health = service.health()
        assert health.alive and "disk I/O error" in health.last_error and "disk I/O error" in health.problem
        job_id = service.submit(GenerationRequest(image=image, **FAST))
        assert wait_done(service, job_id).state == JobState.FINISHED
        assert service.health().last_error is None and service.health().problem is None
    finally:
        service.stop()


def test_a_job_that_crashes_the_worker_is_failed_in_the_queue_and_the_next_job_runs(tiny_models_dir, image,
                                                                                   tmp_path, monkeypatch):
    service = make_service(tiny_models_dir, tmp_path)
    original_run = service._run
    calls = {"n": 0}

    def crash_first(job, slot):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected crash")
        return original_run(job, slot)

    monkeypatch.setattr(service, "_run", crash_first)
    service.start()
    try:
        first = service.submit(GenerationRequest(image=image, **FAST))
        second = service.submit(GenerationRequest(image=image, seed=2, **FAST))
        assert wait_done(service, first).state == JobState.FAILED
        assert service.store.get(first).state == JobState.FAILED, "not left 'running' until a restart"
        assert wait_done(service, second).state == JobState.FINISHED
    finally:
        service.stop()


def test_a_second_process_on_the_same_folder_runs_nothing_and_reports_the_stored_truth(tiny_models_dir, image,
                                                                                       tmp_path):
    """`jobs run` owns the queue: the app queues and reports from the database, then takes over when it ends."""
    app = make_service(tiny_models_dir, tmp_path)
    job_id = app.submit(GenerationRequest(image=image, prompt="run elsewhere", **{**FAST, "seconds": 2.4}))
    runner = subprocess.Popen(
        [sys.executable, "-m", "framepack_core", "jobs", "--output-dir", str(tmp_path), "run", "--models-dir",
         str(tiny_models_dir), "--device", "cpu", "--quiet"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while app.store.get(job_id).state == JobState.QUEUED:
            assert time.monotonic() < deadline and runner.poll() is None, runner.stdout.read() if runner.poll() else ""
            time.sleep(0.05)
        app.start()
        health = app.health()
        assert not health.running_here and health.queue_owner and str(runner.pid) in health.queue_owner
        snapshot = wait_done(app, job_id, timeout=120)
        assert snapshot.state == JobState.FINISHED, snapshot
        assert snapshot.output_video is not None and snapshot.output_video.is_file()
        assert app.store.get(job_id).attempts == 1, "run once, by the other process only"
        runner.wait(timeout=60)

        after = app.submit(GenerationRequest(image=image, seed=5, **FAST))
        assert wait_done(app, after, timeout=120).state == JobState.FINISHED
        assert app.health().running_here, "the app took the queue over once the other process ended"
    finally:
        if runner.poll() is None:
            runner.kill()
        app.stop()


def test_snapshot_folders_left_by_a_crash_are_swept_at_start(tiny_models_dir, tmp_path):
    leftovers = [tmp_path / ".snapshots-20261202_101010_abc_seed1.x1y2z3w4",
                 tmp_path / ".20261202_101010_abcdef123456_seed31337.k2j3h4g5"]  # an older version's name
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / "section_001.mp4").write_bytes(b"x")
    kept = tmp_path / ".my-notes"
    kept.mkdir()
    service = make_service(tiny_models_dir, tmp_path)
    service.start()
    try:
        assert not any(folder.exists() for folder in leftovers)
        assert kept.is_dir(), "only snapshot folders are swept"
    finally:
        service.stop()


def test_a_viewer_reaches_only_their_own_jobs_in_the_service(tiny_models_dir, image, tmp_path):
    service = make_service(tiny_models_dir, tmp_path)  # not started: the jobs stay queued
    alice, bob = Viewer("alice"), Viewer("bob")
    mine = service.submit(GenerationRequest(image=image, **FAST), owner="alice")
    with pytest.raises(KeyError):
        service.snapshot(mine, bob)
    assert service.snapshot(mine, alice).owner == "alice"
    assert service.cancel(mine, bob) is False and service.active_job_id(bob) is None
    assert service.active_job_id(alice) == mine and service.active_job_id(Viewer("root", admin=True)) == mine
    assert [row.id for row in service.queue_rows(viewer=bob)] == []
    for action in (lambda: service.retry(mine, bob), lambda: service.delete(mine, bob),
                   lambda: service.move(mine, 1, bob), lambda: service.edit(mine, {"seed": 2}, bob)):
        with pytest.raises(Exception, match="There is no job"):
            action()
    assert service.store.get(mine).state == JobState.QUEUED


def test_a_user_over_the_pending_limit_is_refused_and_others_are_not(tiny_models_dir, image, tmp_path):
    from framepack_core.jobs.queue import QueueLimitError

    service = make_service(tiny_models_dir, tmp_path)
    for seed in range(2):
        service.submit(GenerationRequest(image=image, seed=seed, **FAST), owner="alice", max_pending=2)
    with pytest.raises(QueueLimitError):
        service.submit(GenerationRequest(image=image, seed=9, **FAST), owner="alice", max_pending=2)
    service.submit(GenerationRequest(image=image, seed=9, **FAST), owner="bob", max_pending=2)
    assert len(service.store.list(states=(JobState.QUEUED,))) == 3


def test_a_user_reorders_only_their_own_jobs_and_cannot_jump_ahead_of_another(tiny_models_dir, image, tmp_path):
    service = make_service(tiny_models_dir, tmp_path)  # not started: the jobs stay queued
    first, second = (service.submit(GenerationRequest(image=image, seed=n, **FAST), owner="alice") for n in (1, 2))
    bobs = service.submit(GenerationRequest(image=image, seed=3, **FAST), owner="bob")
    service.move(bobs, 1, Viewer("bob"))
    assert service.queued_job_ids() == [first, second, bobs], "bob's only job keeps its place"
    service.move(second, 1, Viewer("alice"))
    assert service.queued_job_ids() == [second, first, bobs], "alice swaps her own two"
    service.move(bobs, 1, Viewer("root", admin=True))
    assert service.queued_job_ids() == [bobs, second, first], "an admin orders the whole queue"


def test_deleting_a_finished_job_keeps_its_video_its_owners(tiny_models_dir, image, tmp_path):
    service = make_service(tiny_models_dir, tmp_path)
    service.start()
    try:
        job_id = service.submit(GenerationRequest(image=image, **FAST), owner="alice")
        video = wait_done(service, job_id).output_video
        service.delete(job_id, Viewer("alice"))
        assert [r.video for r in service.list_outputs(viewer=Viewer("alice"))] == [video.resolve()]
        assert service.list_outputs(viewer=Viewer("bob")) == []
    finally:
        service.stop()
