"""Job folders: a job killed with SIGKILL mid-section resumes from its last finished section, bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from framepack_core.cli import main as cli
from framepack_core.events import CancelToken, JobCancelled, JobFailed, JobFinished, Notice, SectionFinished
from framepack_core.jobs.checkpoint import JobDirectory
from framepack_core.jobs.spec import JobSpec, file_sha256
from framepack_core.media.video_io import probe_video, read_video_frames
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

REPO_ROOT = Path(__file__).parents[1]
# 4 sections of 4 steps: long enough to kill inside the third section.
JOB = ["--prompt", "a cat walks", "--seconds", "1.6", "--window", "3", "--steps", "4", "--resolution", "64",
       "--no-teacache"]


@pytest.fixture(scope="module")
def image(gradient_image: Path) -> Path:
    return gradient_image


@pytest.fixture(scope="module")
def uninterrupted(tiny_models_dir, image, tmp_path_factory) -> tuple[torch.Tensor, np.ndarray]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    code = cli.main(["generate", "--image", str(image), "--models-dir", str(tiny_models_dir), *JOB, "--quiet",
                     "--output", str(folder / "video.mp4"), "--save-latents", str(folder / "latents.safetensors")])
    assert code == cli.EXIT_OK
    return (load_file(str(folder / "latents.safetensors"))["history_latents"],
            read_video_frames(folder / "video.mp4"))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}


def test_a_job_killed_by_sigkill_mid_section_resumes_and_is_bit_identical(tiny_models_dir, image, uninterrupted,
                                                                           tmp_path, capsys):
    job_dir, output, latents = tmp_path / "job", tmp_path / "video.mp4", tmp_path / "latents.safetensors"
    command = [sys.executable, "-m", "framepack_core", "generate", "--image", str(image), "--models-dir",
               str(tiny_models_dir), *JOB, "--output", str(output), "--save-latents", str(latents),
               "--job-dir", str(job_dir)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    os.set_blocking(process.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + 120
    # The progress bar names the section of every step: kill at the first step of section 3, when two
    # sections are checkpointed and the third is being sampled.
    while b"section 3/4" not in seen and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        seen += process.stderr.read() or b""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, seen.decode(errors="replace")
    assert not output.exists()
    partial = job_dir / "partial.mp4"
    assert probe_video(partial).frame_count > 0, "the sections done so far stay playable"

    code = cli.main(command[3:] + ["--quiet"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_OK, err
    assert "note: Resuming from section 3 of 4: 2 finished section(s) kept in" in err
    assert torch.equal(load_file(str(latents))["history_latents"], uninterrupted[0])
    assert np.array_equal(read_video_frames(output), uninterrupted[1])
    assert not partial.exists() and not list((job_dir / "segments").glob("*.mp4"))

    # Once finished, running it again reports the video instead of making it again.
    code = cli.main(command[3:] + ["--quiet"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_OK and "This job already finished" in err and f"Wrote {output}" in out


def test_a_different_spec_in_the_job_dir_is_refused_naming_what_differs(tiny_models_dir, image, tmp_path, capsys):
    base = ["generate", "--image", str(image), "--models-dir", str(tiny_models_dir), *JOB, "--quiet",
            "--job-dir", str(tmp_path / "job")]
    assert cli.main(base + ["--output", str(tmp_path / "a.mp4")]) == cli.EXIT_OK
    capsys.readouterr()
    code = cli.main(base + ["--seed", "7", "--steps", "5", "--output", str(tmp_path / "b.mp4")])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_FAILED
    assert "holds a different job (settings.seed: 31337 -> 7; settings.steps: 4 -> 5)" in err, err
    assert "give another --job-dir, or delete the folder" in err
    assert not (tmp_path / "b.mp4").exists()


def _engine(tiny_models_dir: Path) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))


def _request(image: Path, folder: Path, **extra) -> GenerationRequest:
    return GenerationRequest(image=image, prompt="a cat walks", seconds=1.6, latent_window_size=3, steps=4,
                             resolution=64, cache="none", output=folder / "video.mp4",
                             save_latents=folder / "latents.safetensors", **extra)


def test_a_cancelled_job_keeps_its_checkpoint_and_resumes_where_it_stopped(tiny_models_dir, image, uninterrupted,
                                                                           tmp_path):
    engine, cancel = _engine(tiny_models_dir), CancelToken()
    events = []
    for event in engine.generate(_request(image, tmp_path), cancel=cancel, job_dir=tmp_path / "job"):
        events.append(event)
        if isinstance(event, SectionFinished) and event.section == 1:
            cancel.cancel()
    cancelled = events[-1]
    assert isinstance(cancelled, JobCancelled) and cancelled.sections_done == 1
    assert probe_video(cancelled.partial_path).frame_count == events[-2].video_frames

    events = list(engine.generate(_request(image, tmp_path), job_dir=tmp_path / "job"))
    assert isinstance(events[-1], JobFinished), events[-1]
    assert any(isinstance(e, Notice) and e.message.startswith("Resuming from section 2 of 4") for e in events)
    assert [e.section for e in events if isinstance(e, SectionFinished)] == [2, 3, 4]
    assert torch.equal(load_file(str(tmp_path / "latents.safetensors"))["history_latents"], uninterrupted[0])


def test_a_job_dir_in_use_by_another_run_is_refused(tiny_models_dir, image, tmp_path):
    request = _request(image, tmp_path)
    spec = JobSpec.from_request(request, file_sha256(image))
    holder = JobDirectory(tmp_path / "job")
    holder.open(spec, None, default_output=tmp_path / "x.mp4")
    try:
        failed = list(_engine(tiny_models_dir).generate(request, job_dir=tmp_path / "job"))[-1]
    finally:
        holder.close()
    assert isinstance(failed, JobFailed) and "is in use by another running job" in failed.message, failed
    assert not (tmp_path / "video.mp4").exists()


def test_a_damaged_checkpoint_is_reported_not_resumed(tiny_models_dir, image, tmp_path):
    engine = _engine(tiny_models_dir)
    job_dir = tmp_path / "job"
    cancel = CancelToken()
    for event in engine.generate(_request(image, tmp_path), cancel=cancel, job_dir=job_dir):
        if isinstance(event, SectionFinished):
            cancel.cancel()
    (job_dir / "checkpoint.safetensors").write_bytes(b"\0" * 100)
    failed = list(engine.generate(_request(image, tmp_path), job_dir=job_dir))[-1]
    assert isinstance(failed, JobFailed) and "is damaged" in failed.message
    assert "Delete the folder to start the job over" in failed.hint
