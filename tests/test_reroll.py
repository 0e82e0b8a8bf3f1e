"""Re-roll from a section: the sections before it are kept bit-identical and not sampled again, the rest is
sampled with the new seed and prompt, and the re-rolled spec run from scratch gives the same result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from framepack_core.errors import InvalidInputError
from framepack_core.events import CancelToken, JobFinished, SectionFinished
from framepack_core.jobs.checkpoint import JobDirectory
from framepack_core.jobs.output_naming import reroll_output_path
from framepack_core.jobs.reroll import (
    history_before,
    load_section_state,
    prepare_reroll,
    read_job_record,
    reroll_job_dir,
)
from framepack_core.media.video_io import read_video_frames
from framepack_core.models.components import ModelVariant
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest, Reroll
from framepack_core.sampling.rerolls import prompt_for_section, reroll_span, with_reroll

# 4 sections of 2 steps at 64 px: section 3 of 4 leaves two sections to keep.
SETTINGS = {"prompt": "a cat walks", "seconds": 1.6, "latent_window_size": 3, "steps": 2, "resolution": 64,
            "cache": "none"}
NEW_PROMPT = "a dog runs"


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))


def _request(image: Path, folder: Path, model: str, **extra) -> GenerationRequest:
    return GenerationRequest(image=image, model=model, output=folder / "video.mp4",
                             save_latents=folder / "latents.safetensors", **SETTINGS, **extra)


class _Recorder:
    """The conditioning each transformer call receives, per call."""

    def __init__(self, engine: FramePackEngine, model: str) -> None:
        self.calls: list[dict[str, torch.Tensor]] = []
        self._handle = engine.models.transformer(ModelVariant(model)).register_forward_pre_hook(
            self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.calls.append({name: kwargs[name].detach().clone()
                           for name in ("encoder_hidden_states", "latents_clean", "hidden_states")})

    def close(self) -> None:
        self._handle.remove()


def _run(engine: FramePackEngine, request: GenerationRequest, model: str, job_dir: Path | None = None):
    recorder = _Recorder(engine, model)
    try:
        events = list(engine.generate(request, job_dir=job_dir))
    finally:
        recorder.close()
    assert isinstance(events[-1], JobFinished), events[-1]
    latents = load_file(str(request.save_latents))["history_latents"]
    sections = [e.section for e in events if isinstance(e, SectionFinished)]
    return latents, read_video_frames(request.output), recorder.calls, sections


@pytest.mark.parametrize("model", ["original", "f1"])
def test_history_after_k_sections_is_cut_from_the_final_history(engine, gradient_image, tmp_path, model):
    job_dir = tmp_path / "job"
    after: dict[int, torch.Tensor] = {}
    spec_digest = None
    for event in engine.generate(_request(gradient_image, tmp_path, model), job_dir=job_dir):
        if isinstance(event, SectionFinished):
            spec_digest = spec_digest or read_job_record(job_dir)[0].digest
            checkpoint = JobDirectory(job_dir).load(spec_digest)
            after[event.section] = (checkpoint.history_latents, checkpoint.total_generated_latent_frames)
    final, final_frames = after[4]
    for section in (1, 2, 3):
        history, frames = after[section]
        assert torch.equal(history_before(ModelVariant(model), final, final_frames, frames), history), section


@pytest.mark.parametrize("model", ["original", "f1"])
def test_a_reroll_keeps_earlier_sections_bit_identical_and_equals_its_spec_run_from_scratch(
        engine, gradient_image, tmp_path, model):
    first_dir, reroll_dir, scratch_dir = tmp_path / "first", tmp_path / "reroll", tmp_path / "scratch"
    for folder in (first_dir, reroll_dir, scratch_dir):
        folder.mkdir()
    first = _run(engine, _request(gradient_image, first_dir, model), model, first_dir / "job")
    first_video = (first_dir / "video.mp4").read_bytes()

    job = prepare_reroll(first_dir / "job", reroll_dir / "job", 3, seed=7, prompt=NEW_PROMPT, image=gradient_image)
    assert job.spec.settings["rerolls"] == [{"from_section": 3, "seed": 7, "prompt": NEW_PROMPT}]
    request = job.spec.request(gradient_image, output=reroll_dir / "video.mp4",
                               save_latents=reroll_dir / "latents.safetensors")
    rerolled = _run(engine, request, model, reroll_dir / "job")
    scratch = _run(engine, job.spec.request(gradient_image, output=scratch_dir / "video.mp4",
                                            save_latents=scratch_dir / "latents.safetensors"), model)

    # Only sections 3 and 4 were sampled: 2 sections x 2 steps.
    assert rerolled[3] == [3, 4] and len(rerolled[2]) == 4 and len(first[2]) == 8
    # Kept: the latents of sections 1-2 (the video's end for the original model, its start for F1) ...
    window = SETTINGS["latent_window_size"]
    kept = slice(-2 * window, None) if model == "original" else slice(0, 1 + 2 * window)
    changed = slice(0, -2 * window) if model == "original" else slice(1 + 2 * window, None)
    assert torch.equal(rerolled[0][:, :, kept], first[0][:, :, kept])
    assert not torch.equal(rerolled[0][:, :, changed], first[0][:, :, changed])
    # ... and their decoded frames, as far as reroll_span says, while the rest changed.
    span = reroll_span(model, SETTINGS["seconds"], window, 3)
    assert span.kept_frames > 0 and len(rerolled[1]) == len(first[1]) == span.total_frames
    frames_kept = slice(-span.kept_frames, None) if model == "original" else slice(0, span.kept_frames)
    frames_changed = slice(0, -span.kept_frames) if model == "original" else slice(span.kept_frames, None)
    assert np.array_equal(rerolled[1][frames_kept], first[1][frames_kept])
    assert not np.array_equal(rerolled[1][frames_changed], first[1][frames_changed])
    # The re-rolled sections use the new prompt's embeddings; the first run's sections 3-4 did not.
    assert torch.equal(rerolled[2][0]["encoder_hidden_states"], scratch[2][4]["encoder_hidden_states"])
    assert not torch.equal(rerolled[2][0]["encoder_hidden_states"], first[2][4]["encoder_hidden_states"])
    # From scratch, the re-rolled spec samples sections 1-2 as the first run did and 3-4 as the re-roll did.
    for a, b in zip(scratch[2], first[2][:4] + rerolled[2]):
        assert all(torch.equal(a[name], b[name]) for name in a)
    assert torch.equal(scratch[0], rerolled[0])
    assert np.array_equal(scratch[1], rerolled[1])
    # The kept sections' video segments are the first run's files, byte for byte (linked, not encoded again).
    kept_segments = load_section_state(first_dir / "job", 2).writer.segments
    assert kept_segments
    for name, _ in kept_segments:
        assert (reroll_dir / "job" / "sections" / name).read_bytes() == (first_dir / "job" / "sections" / name).read_bytes()
    # The previous version is untouched.
    assert (first_dir / "video.mp4").read_bytes() == first_video


def test_a_new_seed_alone_changes_the_noise_but_not_the_prompt(engine, gradient_image, tmp_path):
    first = _run(engine, _request(gradient_image, tmp_path / "a", "original"), "original", tmp_path / "a" / "job")
    job = prepare_reroll(tmp_path / "a" / "job", tmp_path / "b" / "job", 4, seed=99, prompt=None)
    rerolled = _run(engine, job.spec.request(gradient_image, output=tmp_path / "b" / "video.mp4",
                                             save_latents=tmp_path / "b" / "latents.safetensors"),
                    "original", tmp_path / "b" / "job")
    assert rerolled[3] == [4]
    assert torch.equal(rerolled[2][0]["encoder_hidden_states"], first[2][6]["encoder_hidden_states"])
    assert not torch.equal(rerolled[2][0]["hidden_states"], first[2][6]["hidden_states"])  # new noise


def test_a_reroll_refuses_a_section_out_of_range_a_missing_one_a_running_job_and_another_image(
        engine, gradient_image, tmp_path):
    from filelock import FileLock
    from PIL import Image

    cancel = CancelToken()
    for event in engine.generate(_request(gradient_image, tmp_path, "original"), cancel=cancel,
                                 job_dir=tmp_path / "job"):
        if isinstance(event, SectionFinished):
            cancel.cancel()  # one section done

    def refused(source: Path, section: int, **extra) -> InvalidInputError:
        with pytest.raises(InvalidInputError) as caught:
            prepare_reroll(source, tmp_path / f"new{section}", section, seed=1, prompt=None, **extra)
        return caught.value

    error = refused(tmp_path / "job", 5)
    assert error.field == "reroll_from" and "this job has 4 section(s)" in error.message
    assert "from 1 to 4" in error.hint
    error = refused(tmp_path / "job", 3)
    assert error.field == "job_dir" and "has 1 finished section(s) of 4" in error.message
    assert "Re-roll from section 2 or earlier" in error.hint
    assert refused(tmp_path, 2).field == "job_dir"  # not a job folder
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(other)
    error = refused(tmp_path / "job", 2, image=other)
    assert error.field == "job_dir" and "another start image" in error.message
    lock = FileLock(str(tmp_path / "job" / ".lock"))
    with lock:
        error = refused(tmp_path / "job", 2)
    assert error.field == "job_dir" and "in use by a running job" in error.message
    with pytest.raises(InvalidInputError) as caught:
        prepare_reroll(tmp_path / "job", tmp_path / "bad", 2, seed=-1, prompt=None)
    assert caught.value.field == "seed"

    # The interrupted job's one finished section is enough to re-roll from section 2.
    job = prepare_reroll(tmp_path / "job", tmp_path / "ok" / "job", 2, seed=1, prompt=None)
    _, _, _, sections = _run(engine, job.spec.request(gradient_image, output=tmp_path / "ok" / "video.mp4",
                                                      save_latents=tmp_path / "ok" / "latents.safetensors"),
                             "original", tmp_path / "ok" / "job")
    assert sections == [2, 3, 4]

    request = GenerationRequest(image=gradient_image, **SETTINGS, rerolls=(Reroll(9, 1),))
    with pytest.raises(InvalidInputError) as caught:
        next(iter(engine.generate(request)))  # refused before anything loads
    assert caught.value.field == "reroll_from"


def test_rerolling_a_rerolled_job_from_an_earlier_section_replaces_the_later_reroll():
    rerolls = with_reroll((), 3, 7, "a dog")
    rerolls = with_reroll(rerolls, 4, 8, None)
    assert prompt_for_section(rerolls, 4) == "a dog" and prompt_for_section(rerolls, 2) is None
    assert with_reroll(rerolls, 2, 9, None) == (Reroll(2, 9, None),)
    assert with_reroll(rerolls, 4, 10, "x") == (Reroll(3, 7, "a dog"), Reroll(4, 10, "x"))


def test_reroll_span_says_which_end_of_the_clip_changes():
    original = reroll_span("original", 6, 9, 3)
    assert original.describe().startswith("Re-rolling sections 3-5 of 5 in generation order: they make the first "
                                          "3.60 s of the video")
    assert "the last 1.20 s (36 frames) are kept bit-identical" in original.describe()
    assert original.kept_s == (original.changed_s[1], original.total_frames / 30)
    f1 = reroll_span("f1", 6, 9, 5)
    assert f1.describe().startswith("Re-rolling section 5 of 5 in generation order: it makes the video from 4.80 s")
    assert f1.kept_s[0] == 0.0 and "the first 3.73 s (112 frames) are kept" in f1.describe()
    assert reroll_span("original", 6, 9, 1).kept_s is None


def test_reroll_names_never_overwrite(tmp_path):
    (tmp_path / "x_seed1_r2.mp4").write_bytes(b"")
    assert reroll_output_path(tmp_path / "x_seed1.mp4", 2) == tmp_path / "x_seed1_r3.mp4"
    assert reroll_output_path(tmp_path / "x_seed1_r3.mp4", 2) == tmp_path / "x_seed1_r3.mp4"
    (tmp_path / "job-r2").mkdir()
    assert reroll_job_dir(tmp_path / "job") == tmp_path / "job-r3"


def test_the_cli_rerolls_into_a_new_folder_and_video_and_says_which_part_changes(tiny_models_dir, gradient_image,
                                                                                  tmp_path, capsys):
    from framepack_core.cli import main as cli

    common = ["generate", "--image", str(gradient_image), "--models-dir", str(tiny_models_dir), "--quiet"]
    job = ["--prompt", "a cat walks", "--seconds", "1.6", "--window", "3", "--steps", "2", "--resolution", "64",
           "--no-teacache"]
    assert cli.main(common + job + ["--job-dir", str(tmp_path / "job"), "--output", str(tmp_path / "clip.mp4")]) == 0
    first = (tmp_path / "clip.mp4").read_bytes()
    capsys.readouterr()

    code = cli.main(common + ["--job-dir", str(tmp_path / "job"), "--reroll-from", "3", "--seed", "5"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_OK, err
    assert "note: Re-rolling sections 3-4 of 4 in generation order: they make the first 0.80 s" in err
    assert f"this one goes to {tmp_path / 'job-r2'} and {tmp_path / 'clip_r2.mp4'}" in err
    assert "Resuming from section 3 of 4" in err and f"Wrote {tmp_path / 'clip_r2.mp4'}" in out
    assert (tmp_path / "clip.mp4").read_bytes() == first
    assert read_job_record(tmp_path / "job-r2")[0].settings["rerolls"] == [
        {"from_section": 3, "seed": 5, "prompt": None}]

    # The video describes itself with its re-roll: "load settings from a video" remakes it from scratch, the same.
    code = cli.main(common + ["--from", str(tmp_path / "clip_r2.mp4"), "--output", str(tmp_path / "again.mp4")])
    assert code == cli.EXIT_OK, capsys.readouterr().err
    assert np.array_equal(read_video_frames(tmp_path / "again.mp4"), read_video_frames(tmp_path / "clip_r2.mp4"))
    capsys.readouterr()

    # The same command again (after a Ctrl-C or a crash) goes on in the same folder instead of starting over.
    code = cli.main(common + ["--job-dir", str(tmp_path / "job"), "--reroll-from", "3", "--seed", "5"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_OK and f"this re-roll is already in {tmp_path / 'job-r2'}" in err
    assert "This job already finished" in err and not (tmp_path / "job-r3").exists()

    code = cli.main(common + ["--job-dir", str(tmp_path / "job"), "--reroll-from", "9"])
    assert code == cli.EXIT_BAD_INPUT
    assert "error: --reroll-from: section 9 is out of range" in capsys.readouterr().err
    code = cli.main(common + ["--job-dir", str(tmp_path / "job"), "--reroll-from", "2", "--steps", "3"])
    assert code == cli.EXIT_BAD_INPUT and "--steps: is the job's own in a re-roll" in capsys.readouterr().err


def test_the_rest_api_rerolls_a_finished_job_as_a_new_one_for_its_owner_only(tiny_models_dir, tmp_path):
    import io
    import json

    from fastapi.testclient import TestClient
    from PIL import Image

    from app.api.routes import build_api
    from app.service.generation import GenerationService
    from app.settings import Settings
    from framepack_core.jobs.queue import JobQueue, QueueLimitError

    out = tmp_path / "outputs"
    service = GenerationService(
        lambda: FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu"))),
        out, queue=JobQueue.for_output_dir(out))
    service.start()
    alice, bob = ("alice", "wonderland"), ("bob", "builder")
    client = TestClient(build_api(service, Settings(output_dir=out, auth=(alice, bob))))
    try:
        image = io.BytesIO()
        Image.new("RGB", (96, 64), (200, 40, 90)).save(image, format="PNG")
        settings = {"latent_window_size": 3, "steps": 2, "resolution": 64, "seconds": 0.8, "cache": "none"}
        job_id = client.post("/jobs", files={"image": ("in.png", image.getvalue(), "image/png")},
                             data={"settings": json.dumps(settings)}, auth=alice).json()["id"]
        _wait(service, job_id)
        first = client.get(f"/jobs/{job_id}", auth=alice).json()
        assert first["state"] == "finished", first

        assert client.post(f"/jobs/{job_id}/reroll", json={"from_section": 2}, auth=bob).status_code == 404
        with pytest.raises(KeyError):
            service.reroll(job_id, 2, viewer=_viewer("bob"))
        refused = client.post(f"/jobs/{job_id}/reroll", json={"from_section": 3}, auth=alice)
        assert refused.status_code == 422 and refused.json()["field"] == "reroll_from", refused.text
        # A re-roll is a queued job like any other: it counts against its owner's pending limit.
        jobs_before = len(service.store.list())
        with pytest.raises(QueueLimitError):
            service.reroll(job_id, 2, seed=5, viewer=_viewer("alice"), max_pending=0)
        assert len(service.store.list()) == jobs_before

        answer = client.post(f"/jobs/{job_id}/reroll", json={"from_section": 2, "seed": 4, "prompt": "a dog"},
                             auth=alice)
        assert answer.status_code == 201, answer.text
        new = answer.json()
        assert new["id"] != job_id
        assert new["spec"]["settings"]["rerolls"] == [{"from_section": 2, "seed": 4, "prompt": "a dog"}]
        _wait(service, new["id"])
        done = client.get(f"/jobs/{new['id']}", auth=alice).json()
        assert done["state"] == "finished", done
        assert done["video"].endswith("_r2.mp4") and done["video"] != first["video"]
        assert client.get(f"/jobs/{job_id}/video", auth=alice).status_code == 200  # the old video stays
        assert client.get(f"/jobs/{new['id']}", auth=bob).status_code == 404
    finally:
        service.stop()


def _wait(service, job_id: str, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.store.get(job_id).state.done:
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


def _viewer(login: str):
    from app.access import Viewer

    return Viewer.of(login, logins_on=True, admins=())
