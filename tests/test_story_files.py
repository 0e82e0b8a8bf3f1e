"""The end image and keyframe images through every edge: ``generate --from`` asks for them again and checks them,
``jobs submit`` queues them, and the REST API takes them as extra uploads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file

from app.api.routes import build_api
from app.service.generation import GenerationService
from app.settings import Settings
from framepack_core.cli import main as cli
from framepack_core.jobs.output_description import read_output_description
from framepack_core.jobs.queue import JobQueue
from framepack_core.jobs.spec import file_sha256
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import Keyframe

FAST = ["--seconds", "1.2", "--window", "3", "--steps", "1", "--resolution", "64", "--no-teacache", "--quiet"]


def _png(path: Path, shift: int, height: int = 200, width: int = 300) -> Path:
    y, x = np.mgrid[0:height, 0:width]
    Image.fromarray(np.stack([(x + shift) % 256, (y * shift) % 256, (x * y) % 256], -1).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("story")
    return {name: _png(folder / f"{name}.png", shift) for name, shift in
            (("start", 0), ("end", 3), ("pose", 7), ("other", 11))}


@pytest.fixture(scope="module")
def made(tiny_models_dir: Path, images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A video made with an end image at strength 0.6 and a keyframe at 0.5 s."""
    folder = tmp_path_factory.mktemp("made")
    video, latents = folder / "story.mp4", folder / "story.safetensors"
    code = cli.main(["generate", "--image", str(images["start"]), "--end-image", str(images["end"]),
                     "--end-strength", "0.6", "--keyframe", f"0.5:{images['pose']}", "--models-dir",
                     str(tiny_models_dir), *FAST, "--output", str(video), "--save-latents", str(latents)])
    assert code == cli.EXIT_OK
    return {"video": video, "latents": latents}


def _cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_the_videos_spec_holds_the_end_frame_settings_and_its_files_by_sha256(made, images):
    spec = read_output_description(made["video"]).spec
    assert spec.settings["end_strength"] == 0.6 and spec.settings["loop"] is False
    assert spec.inputs["end_image"] == file_sha256(images["end"])
    assert spec.inputs["keyframes"] == [{"seconds": 0.5, "image_sha256": file_sha256(images["pose"])}]


def test_from_with_the_same_files_again_reproduces_the_latents_bit_for_bit(made, images, tiny_models_dir, tmp_path,
                                                                           capsys):
    latents = tmp_path / "again.safetensors"
    code, err = _cli(capsys, "generate", "--from", made["video"], "--image", images["start"], "--end-image",
                     images["end"], "--keyframe", f"0.5:{images['pose']}", "--models-dir", tiny_models_dir,
                     "--quiet", "--output", tmp_path / "again.mp4", "--save-latents", latents)
    assert code == cli.EXIT_OK, err
    first, again = load_file(made["latents"]), load_file(latents)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert read_output_description(tmp_path / "again.mp4").spec == read_output_description(made["video"]).spec


@pytest.mark.parametrize("extra, expected", [
    ([], "error: --end-image: story.mp4 was made with an end image"),
    (["--end-image", "OTHER"], "error: --end-image: OTHER is not the end image story.mp4 was made with"),
    (["--end-image", "END"], "error: --keyframe: story.mp4 was made with a keyframe at 0.5 s"),
    (["--end-image", "END", "--keyframe", "0.5:OTHER"], "is not the keyframe at 0.5 s story.mp4 was made with"),
])
def test_from_refuses_a_missing_or_different_input_file_with_exit_2(made, images, tiny_models_dir, tmp_path,
                                                                    capsys, extra, expected):
    names = {"OTHER": str(images["other"]), "END": str(images["end"])}
    extra = [names.get(e, e.replace("OTHER", str(images["other"]))) for e in extra]
    code, err = _cli(capsys, "generate", "--from", made["video"], "--image", images["start"], *extra,
                     "--models-dir", tiny_models_dir, "--output", tmp_path / "x.mp4")
    assert code == cli.EXIT_BAD_INPUT, err
    assert expected.replace("OTHER", str(images["other"])) in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_jobs_submit_queues_the_end_image_and_keyframes_with_the_job(images, tmp_path, capsys):
    out = tmp_path / "outputs"
    code, err = _cli(capsys, "jobs", "--output-dir", out, "submit", "--image", images["start"], "--end-image",
                     images["end"], "--keyframe", f"0.5:{images['pose']}", "--seconds", "1.2", "--window", "3")
    assert code == cli.EXIT_OK, err
    job = JobQueue.for_output_dir(out).list()[0]
    request = job.request()
    assert file_sha256(request.end_image) == file_sha256(images["end"])
    assert [(k.seconds, file_sha256(k.image)) for k in request.keyframes] == [(0.5, file_sha256(images["pose"]))]
    code, err = _cli(capsys, "jobs", "--output-dir", out, "submit", "--image", images["start"], "--model", "f1",
                     "--loop")
    assert code == cli.EXIT_BAD_INPUT and "--loop: FramePack-F1" in err, err


@pytest.fixture()
def api(tiny_models_dir: Path, tmp_path: Path):
    out = tmp_path / "outputs"

    def factory() -> FramePackEngine:
        return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))

    service = GenerationService(factory, out, queue=JobQueue.for_output_dir(out))  # not started: jobs stay queued
    yield TestClient(build_api(service, Settings(output_dir=out))), service
    service.stop()


def _upload(path: Path) -> tuple[str, bytes, str]:
    return path.name, path.read_bytes(), "image/png"


def test_rest_takes_the_end_image_and_keyframes_as_uploads_and_a_spec_with_them_again(api, images):
    client, service = api
    files = [("image", _upload(images["start"])), ("end_image", _upload(images["end"])),
             ("keyframe_images", _upload(images["pose"]))]
    settings = {"seconds": 1.2, "latent_window_size": 3, "end_strength": 0.5}
    answer = client.post("/jobs", files=files,
                         data={"settings": json.dumps(settings), "keyframe_seconds": "[0.5]"})
    assert answer.status_code == 201, answer.text
    spec = answer.json()["spec"]
    assert spec["inputs"]["end_image"] == file_sha256(images["end"]) and spec["settings"]["end_strength"] == 0.5
    request = service.store.get(answer.json()["id"]).request()
    assert request.keyframes[0].seconds == 0.5 and file_sha256(request.keyframes[0].image) == file_sha256(
        images["pose"])
    again = client.post("/jobs", files=files, data={"spec": json.dumps(spec), "keyframe_seconds": "[0.5]"})
    assert again.status_code == 201, again.text
    missing = client.post("/jobs", files=files[:1], data={"spec": json.dumps(spec)})
    assert missing.status_code == 422 and missing.json()["field"] == "inputs.end_image", missing.text


@pytest.mark.parametrize("settings, extra, field", [
    ({"model": "f1"}, {"keyframe_seconds": "[0.5]"}, "end_image"),
    ({}, {"keyframe_seconds": "[0.5, 1]"}, "keyframes"),
    ({}, {"keyframe_seconds": "[9]"}, "keyframes"),
])
def test_rest_refuses_bad_story_inputs_with_422_naming_the_field(api, images, settings, extra, field):
    client, _ = api
    files = [("image", _upload(images["start"])), ("end_image", _upload(images["end"])),
             ("keyframe_images", _upload(images["pose"]))]
    answer = client.post("/jobs", files=files, data={"settings": json.dumps({"seconds": 1.2, "latent_window_size": 3,
                                                                            **settings}), **extra})
    assert answer.status_code == 422 and answer.json()["field"] == field, answer.text


def test_rest_keyframe_uploads_become_keyframes_in_order():
    from app.api.story_uploads import story_uploads

    fields = story_uploads(None, [Path("a.png"), Path("b.png")], "[2, 1]")
    assert fields == {"keyframes": (Keyframe(2, Path("a.png")), Keyframe(1, Path("b.png")))}


def test_a_queued_job_edited_so_its_keyframe_falls_past_the_end_fails_cleanly_when_its_turn_comes(
        tiny_models_dir, images, tmp_path, capsys):
    from framepack_core.jobs.queue import JobState
    from framepack_core.jobs.runner import QueueRunner

    out = tmp_path / "outputs"
    code, err = _cli(capsys, "jobs", "--output-dir", out, "submit", "--image", images["start"], "--keyframe",
                     f"1:{images['pose']}", "--seconds", "1.2", "--window", "3")
    assert code == cli.EXIT_OK, err
    queue = JobQueue.for_output_dir(out)
    job = queue.list()[0]
    queue.edit(job.id, job.spec.with_changes({"seconds": 0.4}))  # one section, 0.4 s: the keyframe is past it
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))
    ended = QueueRunner(queue, engine, out).run_pending()[0]
    assert ended.state == JobState.FAILED
    assert "keyframes: the keyframe at 1 s is past the end of the video" in ended.error
