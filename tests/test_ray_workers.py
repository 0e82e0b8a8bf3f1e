"""Ray workers on a local Ray instance: jobs run side by side on actors, a killed actor's job resumes on another
bit-identically, a cancel reaches the remote job, and files travel as bytes (no folder is shared)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ray = pytest.importorskip("ray")

from framepack_core.cli import main as cli  # after the skip: the module needs Ray
from framepack_core.events import CancelToken, JobCancelled, Notice, SectionFinished, WorkerLost
from framepack_core.jobs.queue import JobQueue, JobState
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.media.video_io import probe_video, read_video_frames
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest
from framepack_core.workers.pool import WorkerPool
from framepack_core.workers.ray_actors import RayWorker, connect_ray
from framepack_core.workers.recipe import EngineRecipe

# 4 sections of 4 steps: long enough to stop a job between its first and its last section.
LONG = {"prompt": "a cat walks", "seconds": 1.6, "latent_window_size": 3, "steps": 4, "resolution": 64,
        "cache": "none"}
SHORT = {"prompt": "a dog runs", "seconds": 0.8, "latent_window_size": 3, "steps": 3, "resolution": 64,
         "cache": "none"}


@pytest.fixture(scope="module")
def ray_cluster():
    connect_ray("local", num_cpus=4)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def workers(ray_cluster, tiny_models_dir):
    """Two CPU workers whose actors stay up across the tests (their models load once)."""
    recipe = EngineRecipe(device="cpu", models_dir=tiny_models_dir, offline=True)
    made = [RayWorker(recipe, "ray-1"), RayWorker(recipe, "ray-2")]
    yield made
    for worker in made:
        worker.close()


@pytest.fixture(scope="module")
def reference(tiny_models_dir, gradient_image, tmp_path_factory) -> tuple[torch.Tensor, np.ndarray]:
    """The LONG job run in this process, uninterrupted: its final history latents and its video's frames."""
    folder = tmp_path_factory.mktemp("reference")
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))
    request = GenerationRequest(image=gradient_image, output=folder / "video.mp4", **LONG)
    events = list(engine.generate(request, job_dir=folder / "job"))
    assert type(events[-1]).__name__ == "JobFinished", events[-1]
    return _history(folder / "job"), read_video_frames(folder / "video.mp4")


def _history(job_dir: Path) -> torch.Tensor:
    return load_file(str(job_dir / "checkpoint.safetensors"))["history_latents"]


def _submit(queue: JobQueue, image: Path, **settings) -> str:
    request = GenerationRequest(image=image, **settings)
    return queue.submit(JobSpec.from_request(request, file_sha256(image)), image).id


def test_two_jobs_run_at_the_same_time_on_two_actors(workers, gradient_image, tmp_path):
    queue = JobQueue(tmp_path / "queue")
    first, second = _submit(queue, gradient_image, **SHORT), _submit(queue, gradient_image, seed=7, **SHORT)
    done = WorkerPool(queue, workers, tmp_path / "out").run_pending()
    rows = [queue.get(first), queue.get(second)]
    assert [row.state for row in rows] == [JobState.FINISHED] * 2, [row.error for row in rows]
    assert {row.worker for row in rows} == {"ray-1", "ray-2"} and len(done) == 2
    a, b = rows
    assert a.started_at < b.ended_at and b.started_at < a.ended_at, "the two jobs overlapped in time"
    for row in rows:
        assert row.output.parent == tmp_path / "out" and probe_video(row.output).frame_count == 25
        assert row.output.with_suffix(".json").is_file(), "the sidecar came back with the video"


def test_a_cancel_reaches_the_remote_job_and_its_files_come_back(workers, gradient_image, tmp_path):
    worker, cancel = workers[0], CancelToken()
    job_dir, output = tmp_path / "job", tmp_path / "out" / "video.mp4"
    # 8 sections: a cancel given after the second has the rest of the job to arrive in, however loaded the machine.
    request = GenerationRequest(image=gradient_image, output=output, **{**LONG, "seconds": 3.2})
    events = []
    for event in worker.generate(request, cancel=cancel, job_id="cancelled-job", job_dir=job_dir,
                                 snapshot_dir=tmp_path / "snapshots"):
        events.append(event)
        if isinstance(event, SectionFinished):
            # Written on this side before the event arrives: the path it names is already here.
            assert event.segment_path is None or (event.segment_path.is_relative_to(job_dir)
                                                  and event.segment_path.is_file())
            assert event.snapshot_path.parent == tmp_path / "snapshots" and event.snapshot_path.is_file()
            assert (job_dir / "checkpoint.safetensors").is_file() and (job_dir / "job.json").is_file()
            assert not _lock_is_free(job_dir), "the job folder here is locked while the job runs there"
            if event.section == 2:  # the first section that makes final frames (a segment)
                cancel.cancel()
    end = events[-1]
    assert isinstance(end, JobCancelled), end
    assert 2 <= end.sections_done < 8
    assert end.partial_path == tmp_path / "out" / "video.partial.mp4" and probe_video(end.partial_path).frame_count
    assert end.partial_path.with_suffix(".json").is_file()
    # No shared folder: the actor worked in a folder of its own, removed at the end; the job folder here got the
    # checkpoint, the record and the segments, and stays resumable.
    remote = Path(worker.last_remote_root)
    assert not remote.exists() and not remote.is_relative_to(tmp_path)
    assert list((job_dir / "segments").glob("*.mp4")) and (job_dir / "partial.mp4").is_file()
    assert not any(str(remote) in str(value) for event in events for value in vars(event).values())
    assert _lock_is_free(job_dir), "the job folder's lock was held while the job ran, and released after it"


def test_a_cancel_given_before_the_job_reaches_the_actor_is_not_lost(workers, tiny_models_dir, gradient_image,
                                                                     tmp_path):
    request = GenerationRequest(image=gradient_image, output=tmp_path / "video.mp4", **LONG)
    cancel = CancelToken()
    cancel.cancel()  # before it is sent
    events = list(workers[1].generate(request, cancel=cancel, job_id="early", job_dir=tmp_path / "job"))
    assert isinstance(events[-1], JobCancelled) and events[-1].sections_done == 0, events[-1]

    # While a new actor still starts (it loads its libraries for seconds): asked again until it has the job.
    cold = RayWorker(EngineRecipe(device="cpu", models_dir=tiny_models_dir, offline=True), "ray-cold")
    cancel = CancelToken()
    threading.Timer(1.0, cancel.cancel).start()
    try:
        events = list(cold.generate(request, cancel=cancel, job_id="starting", job_dir=tmp_path / "job2"))
    finally:
        cold.close()
    assert isinstance(events[-1], JobCancelled) and events[-1].sections_done == 0, events[-1]


def test_a_killed_actor_s_job_resumes_on_the_other_one_bit_identically(workers, gradient_image, reference,
                                                                         tmp_path):
    queue = JobQueue(tmp_path / "queue")
    job_id = _submit(queue, gradient_image, **LONG)
    by_name = {worker.name: worker for worker in workers}
    killed: list[str] = []
    killed_folders: list[Path] = []
    seen = []

    def kill_after_first_section(job, event) -> None:
        seen.append(event)
        if isinstance(event, SectionFinished) and not killed:
            killed.append(job.worker)
            killed_folders.append(Path(by_name[job.worker].last_remote_root))
            ray.kill(by_name[job.worker].actor, no_restart=True)

    started = time.monotonic()
    WorkerPool(queue, workers, tmp_path / "out").run_pending(kill_after_first_section)
    row = queue.get(job_id)
    assert row.state == JobState.FINISHED, (row.error, time.monotonic() - started)
    lost = [event for event in seen if isinstance(event, WorkerLost)]
    assert [event.worker for event in lost] == killed, seen
    assert row.worker != killed[0] and row.attempts == 2
    resumed = [event.message for event in seen if isinstance(event, Notice) and "Resuming" in event.message]
    assert resumed and str(queue.job_dir(job_id)) in resumed[0], "the notice names this side's job folder"
    history, frames = reference
    assert torch.equal(_history(queue.job_dir(job_id)), history)
    assert np.array_equal(read_video_frames(row.output), frames)
    record = json.loads((queue.job_dir(job_id) / "job.json").read_text())
    assert record["output"] == str(row.output), "the job folder here names the video here"

    # Run again, the finished job is reported, not made again: its checkpoint and video travel to the actor. The
    # killed worker's fresh actor runs it, and removes the folder its killed actor could not.
    assert killed_folders[0].is_dir()
    events = list(by_name[killed[0]].generate(row.request(), job_id=job_id, job_dir=queue.job_dir(job_id)))
    assert not killed_folders[0].exists()
    assert f"This job already finished: {row.output}" in [e.message for e in events if isinstance(e, Notice)]
    assert events[-1].output_path == row.output and events[-1].video_frames == len(frames)


def _lock_is_free(job_dir: Path) -> bool:
    from filelock import FileLock, Timeout

    lock = FileLock(str(job_dir / ".lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True


def test_a_job_without_a_job_folder_sends_back_its_video_and_latents(workers, gradient_image, tmp_path):
    request = GenerationRequest(image=gradient_image, output=tmp_path / "out" / "clip.mp4",
                                save_latents=tmp_path / "latents" / "clip.safetensors", **SHORT)
    events = list(workers[1].generate(request))
    end = events[-1]
    assert end.output_path == tmp_path / "out" / "clip.mp4" and probe_video(end.output_path).frame_count == 25
    assert end.latents_path == tmp_path / "latents" / "clip.safetensors"
    assert set(load_file(str(end.latents_path))) == {"history_latents", "start_latent"}
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["clip.json", "clip.mp4"]


def test_ray_without_ray_installed_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what ``import ray`` finds where Ray is missing
    code = cli.main(["jobs", "--output-dir", str(tmp_path), "run", "--ray", "local", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    assert "--ray: Ray is not installed" in err and "pip install -r requirements-ray.txt" in err, err


def test_ray_together_with_devices_is_refused(tmp_path, capsys):
    code = cli.main(["jobs", "--output-dir", str(tmp_path), "run", "--ray", "local", "--devices", "cpu,cpu"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and "--ray: cannot be combined with worker devices" in err, err
    assert "How to fix: Give either --ray (Ray actors) or --devices (worker processes" in err, err
    code = cli.main(["jobs", "--output-dir", str(tmp_path), "run", "--ray-workers", "2"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and "--ray-workers: is given without a Ray address" in err, err
    assert "How to fix: Also set --ray: local, or a cluster's address." in err, err
    code = cli.main(["jobs", "--output-dir", str(tmp_path), "run", "--ray", "local", "--ray-workers", "0"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and "--ray-workers: asks for 0 workers" in err, err


def test_jobs_run_with_ray_runs_the_queue_on_actors(ray_cluster, tiny_models_dir, gradient_image, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["jobs", "--output-dir", str(out), "submit", "--image", str(gradient_image), "--prompt", "cli",
                     "--seconds", "0.8", "--window", "3", "--steps", "3", "--resolution", "64", "--no-teacache"]
                    ) == cli.EXIT_OK
    capsys.readouterr()
    code = cli.main(["jobs", "--output-dir", str(out), "run", "--ray", "local", "--ray-workers", "1", "--device",
                     "cpu", "--models-dir", str(tiny_models_dir), "--offline"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_OK, captured.err
    assert "section 2/2 done on ray-1" in captured.err and " finished: " in captured.out, captured
    video = Path(captured.out.split(" finished: ")[1].split()[0])
    assert video.parent == out and probe_video(video).frame_count == 25


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1:1", "ray: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"),
    ("ray://127.0.0.1:1", "ray: cannot reach the Ray cluster at ray://127.0.0.1:1: Connection refused"),
    ("my-cluster", "ray: 'my-cluster' is not a Ray address"),
])
def test_an_address_nothing_answers_at_is_refused_at_once(monkeypatch, address, expected):
    from framepack_core.errors import InvalidInputError

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a process that has not connected yet
    started = time.monotonic()
    with pytest.raises(InvalidInputError) as refused:
        connect_ray(address)
    assert refused.value.message == expected and time.monotonic() - started < 10
