"""The job service behind the UI: queue order, one job at a time, stop, errors, outputs on disk."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.service.generation import GenerationService, JobState
from framepack_core.errors import InvalidInputError
from framepack_core.media.video_io import probe_video
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

FAST = {"latent_window_size": 3, "steps": 3, "resolution": 64, "seconds": 0.8, "cache": "none"}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("svc") / "in.png"
    y, x = np.mgrid[0:200, 0:300]
    Image.fromarray(np.stack([x % 256, y % 256, (x * y) % 256], -1).astype(np.uint8)).save(path)
    return path


def _service(models_dir: Path, out: Path, **kwargs) -> GenerationService:
    def factory() -> FramePackEngine:
        return FramePackEngine(ModelStore(ModelSource(models_dir=models_dir), resolve_device_config("cpu")))

    service = GenerationService(factory, out, **kwargs)
    service.start()
    return service


def _wait_done(service, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    snapshot = service.snapshot(job_id)
    while not snapshot.state.done:
        assert time.monotonic() < deadline, snapshot
        snapshot = service.wait_for_change(job_id, snapshot.version, timeout=1.0)
    return snapshot


def test_finished_job_leaves_video_input_and_settings_and_no_temporary_files(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path)
    try:
        job_id = service.submit(GenerationRequest(image=image, prompt="hello", seed=5, **FAST))
        snapshot = _wait_done(service, job_id)
        assert snapshot.state == JobState.FINISHED, snapshot.error
        assert probe_video(snapshot.output_video).frame_count == 25
        assert snapshot.input_image.is_file() and Image.open(snapshot.input_image).size == (64, 48)
        # The settings file is the video's sidecar: its job spec and environment fingerprint.
        sidecar = json.loads(snapshot.settings_file.read_text())
        assert sidecar["kind"] == "framepack-output" and set(sidecar) == {"kind", "version", "spec", "fingerprint"}
        assert sidecar["spec"]["settings"]["seed"] == 5 and sidecar["spec"]["settings"]["prompt"] == "hello"
        assert snapshot.settings_file == snapshot.output_video.with_suffix(".json")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted([snapshot.output_video.name, snapshot.input_image.name, snapshot.settings_file.name])
        assert "seed5" in snapshot.output_video.name
        (record,) = service.list_outputs()
        assert record.video == snapshot.output_video and record.settings["prompt"] == "hello"
        assert record.settings["complete"] is True and record.input_image == snapshot.input_image
    finally:
        service.stop()


def test_jobs_run_one_at_a_time_in_order_and_queued_jobs_know_their_place(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path)
    try:
        first = service.submit(GenerationRequest(image=image, **{**FAST, "seconds": 1.6}))
        second = service.submit(GenerationRequest(image=image, seed=2, **FAST))
        assert service.snapshot(second).queue_position in (1, 2)
        snapshot = service.snapshot(first)
        while snapshot.state != JobState.RUNNING:
            snapshot = service.wait_for_change(first, snapshot.version)
        assert service.snapshot(second).queue_position == 1
        assert service.snapshot(second).state == JobState.QUEUED
        assert service.active_job_id() == first
        done_first = _wait_done(service, first)
        done_second = _wait_done(service, second)
        assert done_first.state == done_second.state == JobState.FINISHED
        assert done_first.started_at < done_second.started_at
    finally:
        service.stop()


def test_stop_keeps_a_playable_partial_video_and_the_next_job_runs(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path)
    try:
        job_id = service.submit(GenerationRequest(image=image, **{**FAST, "seconds": 2.4}))
        snapshot = service.snapshot(job_id)
        while snapshot.partial_video is None:
            assert not snapshot.state.done, snapshot
            snapshot = service.wait_for_change(job_id, snapshot.version)
        assert probe_video(snapshot.partial_video).frame_count > 0  # a section is in the player before the end
        assert service.cancel(job_id)
        stopped = _wait_done(service, job_id)
        assert stopped.state == JobState.CANCELLED
        assert probe_video(stopped.output_video).frame_count > 0
        assert not service.cancel(job_id)
        again = _wait_done(service, service.submit(GenerationRequest(image=image, **FAST)))
        assert again.state == JobState.FINISHED
    finally:
        service.stop()


def test_cancelling_a_queued_job_removes_it_without_running_it(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path)
    try:
        first = service.submit(GenerationRequest(image=image, **FAST))
        second = service.submit(GenerationRequest(image=image, **FAST))
        assert service.cancel(second)
        assert service.snapshot(second).state == JobState.CANCELLED
        assert service.snapshot(second).started_at is None
        assert _wait_done(service, first).state == JobState.FINISHED
    finally:
        service.stop()


def test_bad_input_is_refused_at_submit_and_the_service_stays_usable(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    try:
        with pytest.raises(InvalidInputError, match="image"):
            service.submit(GenerationRequest(image=broken, **FAST))
        with pytest.raises(InvalidInputError, match="seconds"):
            service.submit(GenerationRequest(image=image, **{**FAST, "seconds": float("nan")}))
        assert service.queued_job_ids() == []
        assert _wait_done(service, service.submit(GenerationRequest(image=image, **FAST))).state == JobState.FINISHED
    finally:
        service.stop()


def test_missing_weights_fail_readably_and_later_jobs_still_run(image, tmp_path):
    service = _service(tmp_path / "no-models", tmp_path / "out")
    try:
        failed = _wait_done(service, service.submit(GenerationRequest(image=image, **FAST)))
        assert failed.state == JobState.FAILED
        assert "no-models" in failed.error and failed.error_hint
        assert _wait_done(service, service.submit(GenerationRequest(image=image, **FAST))).state == JobState.FAILED
    finally:
        service.stop()


def test_keep_intermediates_keeps_the_per_section_snapshots(tiny_models_dir, image, tmp_path):
    service = _service(tiny_models_dir, tmp_path, keep_intermediates=True)
    try:
        done = _wait_done(service, service.submit(GenerationRequest(image=image, **FAST)))
        snapshots = list(tmp_path.glob(".*/*.mp4"))
        assert done.state == JobState.FINISHED and len(snapshots) == 2
    finally:
        service.stop()


class _CountingStore(ModelStore):
    """A real store that counts how often it was asked to release its models."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.releases = 0

    def release_all(self) -> None:
        self.releases += 1
        super().release_all()


def _counting_service(models_dir: Path, out: Path, **kwargs) -> tuple[GenerationService, list[_CountingStore]]:
    stores: list[_CountingStore] = []

    def factory() -> FramePackEngine:
        stores.append(_CountingStore(ModelSource(models_dir=models_dir), resolve_device_config("cpu")))
        return FramePackEngine(stores[-1])

    service = GenerationService(factory, out, **kwargs)
    service.start()
    return service, stores


def test_free_memory_releases_the_models_when_idle_and_waits_for_a_running_job(tiny_models_dir, image, tmp_path):
    service, stores = _counting_service(tiny_models_dir, tmp_path)
    try:
        assert "nothing to free" in service.free_memory()
        job = service.submit(GenerationRequest(image=image, **{**FAST, "seconds": 1.6}))
        snapshot = service.snapshot(job)
        while snapshot.state != JobState.RUNNING:
            snapshot = service.wait_for_change(job, snapshot.version)
        assert "when the queued jobs are done" in service.free_memory()
        assert _wait_done(service, job).state == JobState.FINISHED
        deadline = time.monotonic() + 10
        while stores[0].releases == 0:
            assert time.monotonic() < deadline, "the deferred release never happened"
            time.sleep(0.05)
        assert "nothing to free" in service.free_memory()  # released once, not twice
        assert stores[0].releases == 1
        # The next job loads the models again and runs as before.
        again = service.submit(GenerationRequest(image=image, seed=3, **FAST))
        assert _wait_done(service, again).state == JobState.FINISHED
        while service.active_job_id() is not None:  # the worker clears its job just after reporting it done
            time.sleep(0.02)
        assert "Freed" in service.free_memory() and stores[0].releases == 2
    finally:
        service.stop()


class _SlowReleaseStore(_CountingStore):
    """A store whose release takes until the test says so, as a worker process's stop can take seconds."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.releasing = threading.Event()
        self.may_finish = threading.Event()

    def release_all(self) -> None:
        self.releasing.set()
        assert self.may_finish.wait(30)
        super().release_all()


def test_the_page_reads_on_while_the_models_are_released_and_no_job_starts_on_them_meanwhile(tiny_models_dir, image,
                                                                                             tmp_path):
    stores: list[_SlowReleaseStore] = []

    def factory() -> FramePackEngine:
        stores.append(_SlowReleaseStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))
        return FramePackEngine(stores[-1])

    service = GenerationService(factory, tmp_path)
    service.start()
    try:
        first = service.submit(GenerationRequest(image=image, **FAST))
        assert _wait_done(service, first).state == JobState.FINISHED
        while service.active_job_id() is not None:
            time.sleep(0.02)
        said: list[str] = []
        freeing = threading.Thread(target=lambda: said.append(service.free_memory()))
        freeing.start()
        assert stores[0].releasing.wait(30)
        # The release holds no lock the page needs: reads and a submit answer at once.
        started = time.monotonic()
        assert service.snapshot(first).state == JobState.FINISHED and service.health() is not None
        second = service.submit(GenerationRequest(image=image, seed=2, **FAST))
        time.sleep(0.5)
        assert time.monotonic() - started < 5
        assert service.snapshot(second).state == JobState.QUEUED, "no job runs on models being released"
        stores[0].may_finish.set()
        freeing.join(30)
        assert said == ["Freed the models' memory; the next job loads them again."]
        assert _wait_done(service, second).state == JobState.FINISHED and stores[0].releases == 1
    finally:
        stores[0].may_finish.set()
        service.stop()


def test_models_are_released_after_the_idle_timeout(tiny_models_dir, image, tmp_path):
    service, stores = _counting_service(tiny_models_dir, tmp_path, idle_release_s=0.5)
    try:
        job = service.submit(GenerationRequest(image=image, **FAST))
        assert _wait_done(service, job).state == JobState.FINISHED
        deadline = time.monotonic() + 10
        while stores[0].releases == 0:
            assert time.monotonic() < deadline, "the idle release never happened"
            time.sleep(0.05)
        time.sleep(1.0)
        assert stores[0].releases == 1  # once per idle spell, not every half second
    finally:
        service.stop()


def test_the_gallery_lists_videos_by_their_sidecars_partial_ones_marked_and_old_settings_files_too(image, tmp_path):
    from framepack_core.jobs.output_description import OutputDescription, write_sidecar
    from framepack_core.jobs.spec import JobSpec, file_sha256
    from framepack_core.media.video_io import encode_segment

    def video(name: str) -> Path:
        path = tmp_path / name
        encode_segment(np.zeros((3, 32, 32, 3), np.uint8), path, fps=30, crf=16)
        return path

    spec = JobSpec.from_request(GenerationRequest(image=image, prompt="sidecar", seed=8, **FAST), file_sha256(image))
    finished, partial = video("a_seed8.mp4"), video("b_seed8.partial.mp4")
    for path in (finished, partial):
        write_sidecar(path, OutputDescription(spec, {}))
    Image.new("RGB", (64, 48)).save(tmp_path / "b_seed8.png")  # the cropped input image the service keeps
    old = video("c_seed1.mp4")  # written by an earlier version: a flat settings file naming its files
    (tmp_path / "c_seed1.json").write_text(json.dumps({"video": old.name, "input_image": None, "prompt": "old",
                                                       "seed": 1, "complete": True}))
    (tmp_path / "d.json").write_text("{not json")
    service = GenerationService(lambda: None, tmp_path)
    records = {r.video.name: r for r in service.list_outputs()}
    assert set(records) == {"a_seed8.mp4", "b_seed8.partial.mp4", "c_seed1.mp4"}
    assert records["a_seed8.mp4"].settings["prompt"] == "sidecar" and records["a_seed8.mp4"].settings["complete"]
    assert records["b_seed8.partial.mp4"].settings["complete"] is False
    assert records["b_seed8.partial.mp4"].input_image == tmp_path / "b_seed8.png"
    assert records["c_seed1.mp4"].settings["prompt"] == "old"
