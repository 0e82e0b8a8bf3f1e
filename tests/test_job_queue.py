"""The SQLite job queue: order, transitions, one claim per job under concurrency, restarts, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock
from PIL import Image

from framepack_core.cli import main as cli
from framepack_core.jobs.queue import JobQueue, JobState, QueueError
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.media.video_io import probe_video
from framepack_core.request import GenerationRequest

REPO_ROOT = Path(__file__).parents[1]
TINY = ["--seconds", "0.8", "--window", "3", "--steps", "3", "--resolution", "64", "--no-teacache"]


@pytest.fixture(scope="module")
def image(gradient_image: Path) -> Path:
    return gradient_image


def _spec(image: Path, **settings) -> JobSpec:
    request = GenerationRequest(image=image, seconds=0.8, latent_window_size=3, steps=3, resolution=64,
                                cache="none", **settings)
    return JobSpec.from_request(request, file_sha256(image))


def test_jobs_keep_their_order_and_can_be_moved_cancelled_retried_and_deleted(image, tmp_path):
    queue = JobQueue(tmp_path / "q")
    a, b, c = (queue.submit(_spec(image, seed=n), image).id for n in (1, 2, 3))
    assert [j.id for j in queue.list()] == [a, b, c]
    queue.move(c, 1)
    assert [j.id for j in queue.list()] == [c, a, b] and queue.pending_position(b) == 3
    assert queue.cancel(a).state == JobState.CANCELLED
    assert [j.id for j in queue.list(states=(JobState.QUEUED,))] == [c, b]
    assert queue.retry(a).state == JobState.QUEUED and queue.pending_position(a) == 3
    edited = queue.edit(b, _spec(image, seed=22, prompt="edited"))
    assert edited.spec.settings["seed"] == 22 and edited.spec.settings["prompt"] == "edited"
    queue.delete(c)
    assert [j.id for j in queue.list()] == [b, a]
    with pytest.raises(QueueError, match="no job 'nope'"):
        queue.cancel("nope")


def test_ended_and_running_jobs_refuse_what_does_not_apply(image, tmp_path):
    queue = JobQueue(tmp_path / "q")
    job = queue.submit(_spec(image), image)
    running = queue.claim_next()
    assert running.id == job.id and running.state == JobState.RUNNING and running.attempts == 1
    with pytest.raises(QueueError, match="a running job cannot be deleted"):
        queue.delete(job.id)
    with pytest.raises(QueueError, match="only a pending job can be edited"):
        queue.edit(job.id, _spec(image, seed=9))
    with pytest.raises(QueueError, match="only failed or cancelled jobs can be retried"):
        queue.retry(job.id)
    assert queue.cancel(job.id).cancel_requested, "a running job is asked to stop, not ended under its worker"
    assert queue.end(job.id, JobState.CANCELLED).state == JobState.CANCELLED
    with pytest.raises(QueueError, match="has already ended"):
        queue.cancel(job.id)


def test_concurrent_workers_never_claim_the_same_job(image, tmp_path):
    queue = JobQueue(tmp_path / "q")
    submitted = {queue.submit(_spec(image, seed=n), image).id for n in range(24)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = JobQueue(tmp_path / "q")  # each worker with its own connections, as separate processes would
        while (job := mine.claim_next()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(submitted), "every job claimed exactly once"


def test_pending_jobs_survive_a_restart_and_interrupted_ones_go_first(image, tmp_path):
    queue = JobQueue(tmp_path / "q")
    first, second, third = (queue.submit(_spec(image, seed=n), image).id for n in (1, 2, 3))
    assert queue.claim_next().id == first
    assert queue.claim_next().id == second
    alive = FileLock(str(queue.job_dir(second) / ".lock"), timeout=0)
    queue.job_dir(second).mkdir(parents=True, exist_ok=True)
    alive.acquire()  # the second job's worker is still running
    try:
        reopened = JobQueue(tmp_path / "q")
        assert reopened.requeue_interrupted() == [first]
    finally:
        alive.release()
    assert [j.id for j in reopened.list(states=(JobState.QUEUED,))] == [first, third]
    assert reopened.get(second).state == JobState.RUNNING


def test_the_queue_keeps_its_own_copy_of_the_image_and_checks_its_hash(image, tmp_path):
    copy = tmp_path / "mine.png"
    copy.write_bytes(image.read_bytes())
    queue = JobQueue(tmp_path / "q")
    job = queue.submit(_spec(copy), copy)
    copy.unlink()
    assert job.image.is_file() and file_sha256(job.image) == job.spec.image_sha256
    other = tmp_path / "other.png"
    Image.new("RGB", (100, 80), "red").save(other)
    with pytest.raises(Exception, match="is not the spec's input image"):
        queue.submit(_spec(image), other)


def _jobs(capsys, output_dir: Path, *args) -> tuple[int, str, str]:
    code = cli.main(["jobs", "--output-dir", str(output_dir), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_submits_lists_and_runs_jobs_in_queue_order(tiny_models_dir, image, tmp_path, capsys):
    outputs = tmp_path / "outputs"
    ids = []
    for seed in (5, 6):
        code, out, err = _jobs(capsys, outputs, "submit", "--image", image, "--prompt", f"seed {seed}",
                               "--seed", seed, *TINY)
        assert code == cli.EXIT_OK, err
        ids.append(out.split()[0])
    code, out, _ = _jobs(capsys, outputs, "move", ids[1], 1)
    assert f"{ids[1]} is now number 1" in out
    code, out, err = _jobs(capsys, outputs, "submit", "--image", image, "--window", "0")
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: --window:"), err
    code, out, _ = _jobs(capsys, outputs, "list")
    assert out.splitlines()[1].startswith(ids[1]) and "queued" in out
    code, out, err = _jobs(capsys, outputs, "edit", ids[0], '{"prompt": "edited", "seed": 8}')
    assert code == cli.EXIT_OK and "edited: prompt='edited', seed=8" in out, err
    code, out, err = _jobs(capsys, outputs, "edit", ids[0], '{"steps": 0}')
    assert code == cli.EXIT_BAD_INPUT and err.startswith("error: settings.steps: 0 is out of range"), err

    code, out, err = _jobs(capsys, outputs, "run", "--models-dir", tiny_models_dir, "--quiet")
    assert code == cli.EXIT_OK, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == [ids[1], ids[0]], "run in queue order"
    for line in lines:
        video = Path(line.split(": ", 1)[1])
        assert probe_video(video).frame_count == 25
    code, out, _ = _jobs(capsys, outputs, "list", "--json")
    states = {json.loads(line)["id"]: json.loads(line)["state"] for line in out.splitlines()}
    assert states == {ids[0]: "finished", ids[1]: "finished"}


def test_a_queue_worker_killed_mid_job_resumes_the_job_on_the_next_run(tiny_models_dir, image, tmp_path, capsys):
    outputs = tmp_path / "outputs"
    code, out, err = _jobs(capsys, outputs, "submit", "--image", image, "--seconds", "1.6", "--window", "3",
                           "--steps", "4", "--resolution", "64", "--no-teacache")
    job_id = out.split()[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "framepack_core", "jobs", "--output-dir", str(outputs), "run", "--models-dir",
         str(tiny_models_dir)], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.set_blocking(process.stderr.fileno(), False)
    seen, deadline = b"", time.monotonic() + 120
    while b"section 2/4 done" not in seen and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        seen += process.stderr.read() or b""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, seen.decode(errors="replace")
    assert JobQueue.for_output_dir(outputs).get(job_id).state == JobState.RUNNING

    code, out, err = _jobs(capsys, outputs, "run", "--models-dir", tiny_models_dir)
    assert code == cli.EXIT_OK, err
    assert f"{job_id}: note: Resuming from section 3 of 4" in err or f"{job_id}: note: Resuming from section 4 of 4" in err
    job = JobQueue.for_output_dir(outputs).get(job_id)
    assert job.state == JobState.FINISHED and job.attempts == 2
    assert probe_video(job.output).frame_count == 49
