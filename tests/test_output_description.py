"""Self-describing outputs: every mp4 carries its job spec and environment fingerprint (container metadata and a
sidecar JSON), and ``generate --from VIDEO`` / the UI's "Load settings from a video" read them back.

Runs use the tiny models in-process, at window 3, 3 steps, base resolution 64 and 0.8 s (2 sections).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from framepack_core.cli import main as cli
from framepack_core.errors import InvalidInputError
from framepack_core.events import CancelToken, JobCancelled, SectionFinished
from framepack_core.jobs.fingerprint import environment_fingerprint, fingerprint_differences, package_versions
from framepack_core.jobs.output_description import (
    METADATA_TAG,
    OutputDescription,
    container_metadata,
    read_output_description,
    sidecar_path,
)
from framepack_core.jobs.spec import file_sha256
from framepack_core.media.video_io import encode_segment, join_segments, read_video_frames
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

FAST = ["--seconds", "0.8", "--window", "3", "--steps", "3", "--resolution", "64", "--no-teacache", "--quiet"]


def _gradient(height: int, width: int, shift: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x + shift) % 256, y % 256, (x * y + shift) % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = {"image": folder / "start.png", "other": folder / "other.png"}
    Image.fromarray(_gradient(200, 300)).save(paths["image"])
    Image.fromarray(_gradient(200, 300, shift=1)).save(paths["other"])
    return paths


@pytest.fixture(scope="module")
def made(tiny_models_dir: Path, images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One video made by the CLI, with its latents."""
    folder = tmp_path_factory.mktemp("made")
    video, latents = folder / "first.mp4", folder / "first.safetensors"
    code = cli.main(["generate", "--image", str(images["image"]), "--prompt", "a remembered prompt", "--seed", "4242",
                     "--models-dir", str(tiny_models_dir), *FAST, "--output", str(video), "--save-latents",
                     str(latents)])
    assert code == cli.EXIT_OK
    return {"video": video, "latents": latents}


def _cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _tag(video: Path) -> dict:
    with av.open(str(video)) as container:
        return json.loads(container.metadata[METADATA_TAG])


def _ffprobe_tag(video: Path) -> dict:
    result = subprocess.run(["ffprobe", "-v", "error", "-show_entries", f"format_tags={METADATA_TAG}", "-of", "json",
                             str(video)], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(json.loads(result.stdout)["format"]["tags"][METADATA_TAG])


def _with_description(source: Path, target: Path, description: dict | None) -> Path:
    """A copy of ``source`` (remuxed) whose metadata holds ``description`` (none when None), without a sidecar."""
    join_segments([source], target, metadata=None if description is None else {
        METADATA_TAG: json.dumps(description)})
    return target


# --- writing ---------------------------------------------------------------------------------------------------


def test_a_cli_video_carries_its_spec_and_fingerprint_in_the_mp4_and_an_equal_sidecar(made, images,
                                                                                        tiny_models_dir):
    video = made["video"]
    in_metadata = _tag(video)
    assert _ffprobe_tag(video) == in_metadata  # what other tools read is the same document
    sidecar = json.loads(sidecar_path(video).read_text())
    assert sidecar == in_metadata
    assert set(sidecar) == {"kind", "version", "spec", "fingerprint"}
    assert sidecar["kind"] == "framepack-output" and sidecar["version"] == 1

    description = read_output_description(video)
    settings = description.spec.settings
    assert settings["prompt"] == "a remembered prompt" and settings["seed"] == 4242 and settings["steps"] == 3
    assert settings["cache"] == "none" and settings["latent_window_size"] == 3
    assert description.spec.image_sha256 == file_sha256(images["image"])
    assert description.spec.models == description.fingerprint["models"]
    assert "transformer:original" in description.spec.models
    # The sidecar is written atomically: no temporary files are left next to it.
    assert sorted(p.name for p in video.parent.iterdir()) == ["first.json", "first.mp4", "first.safetensors"]


def test_the_fingerprint_has_every_listed_key(made):
    fingerprint = read_output_description(made["video"]).fingerprint
    assert set(fingerprint) == {"models", "versions", "platform", "device", "dtypes", "attention", "runtime",
                                "cache", "memory_plan"}
    assert set(fingerprint["versions"]) == {"python", "torch", "diffusers", "transformers", "gradio", "av"}
    assert fingerprint["versions"]["torch"] == torch.__version__
    assert fingerprint["versions"]["diffusers"] == importlib.metadata.version("diffusers")
    assert fingerprint["platform"]
    assert fingerprint["device"]["type"] == "cpu" and fingerprint["device"]["name"]
    assert fingerprint["dtypes"] == {"transformer": "float32", "text_encoder": "float32", "vae": "float32",
                                     "image_encoder": "float32"}
    # On the CPU the dispatcher's default, torch's native SDPA; the token refiner calls SDPA itself.
    assert fingerprint["attention"]["backend"] == "native"
    assert fingerprint["attention"]["processors"]["HunyuanVideoAttnProcessor2_0"] == "native"
    assert fingerprint["attention"]["sdpa_kernels"] is None
    # The step cache's counts (sampling/caches.py): every call of the job ran the full model.
    assert fingerprint["cache"] == {"method": "none", "threshold": None, "transformer_calls": 6, "computed_calls": 6,
                                    "skipped_calls": 0}
    plan = fingerprint["memory_plan"]  # the CLI plans every job
    assert plan["device_type"] == "cpu" and plan["fp8"] is False
    assert plan["components"]["transformer"]["placement"] == "cpu"
    assert set(plan["components"]) == {"text_encoder", "text_encoder_2", "image_encoder", "vae", "transformer"}


def test_the_fingerprint_without_a_plan_or_gradio_is_still_complete(tiny_models_dir, images, monkeypatch):
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "gradio":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    store = ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu"))
    request = GenerationRequest(image=images["image"], cache="teacache", cache_threshold=0.2)
    fingerprint = environment_fingerprint(store, None, request)
    json.dumps(fingerprint)  # plain JSON data
    assert fingerprint["versions"]["gradio"] is None and fingerprint["versions"]["torch"] == torch.__version__
    assert fingerprint["memory_plan"] is None
    assert fingerprint["cache"] == {"method": "teacache", "threshold": 0.2}
    assert fingerprint["attention"] == {"backend": "native", "processors": {}, "sdpa_kernels": None}
    assert len(fingerprint["models"]) == 8
    assert package_versions()["python"].count(".") == 2


def test_on_cuda_the_fingerprint_names_the_gpu_and_the_enabled_sdpa_kernels(monkeypatch):
    # No GPU here: the two driver calls are stood in for, to check what a CUDA run records and that the CPU path
    # above never made them.
    from framepack_core.jobs.fingerprint import attention_info, device_name

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"NVIDIA H200 #{index}")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    assert device_name(torch.device("cuda:1")) == "NVIDIA H200 #1 (sm_90)"
    kernels = attention_info(torch.device("cuda:1"))["sdpa_kernels"]
    assert "math" in kernels and set(kernels) <= {"flash", "mem_efficient", "math", "cudnn"}


def test_fingerprint_differences_name_what_changed_and_ignore_where_weights_lived(made):
    recorded = dict(read_output_description(made["video"]).fingerprint)
    assert fingerprint_differences(recorded, recorded) == []
    changed = json.loads(json.dumps(recorded))
    changed["versions"]["torch"] = "1.0.0"
    changed["versions"]["gradio"] = "0.1"  # the UI library never changes the numbers
    changed["memory_plan"] = None
    changed["models"]["vae"] = "hunyuanvideo-community/HunyuanVideo/vae sha256:0000"
    changed["models"].pop("transformer:original")
    changed["models"]["transformer:f1"] = "lllyasviel/FramePack_F1_I2V_HY_20250503 sha256:1111"
    assert fingerprint_differences(recorded, changed) == [
        f"models.vae: {recorded['models']['vae']} -> hunyuanvideo-community/HunyuanVideo/vae sha256:0000",
        f"versions.torch: {torch.__version__} -> 1.0.0"]


def test_a_cancelled_job_s_partial_video_describes_itself_too(tiny_models_dir, images, tmp_path):
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))
    cancel = CancelToken()
    request = GenerationRequest(image=images["image"], seconds=1.6, latent_window_size=3, steps=3, resolution=64,
                                cache="none", seed=9, output=tmp_path / "stopped.mp4")
    events = []
    for event in engine.generate(request, cancel=cancel):
        events.append(event)
        if isinstance(event, SectionFinished):
            cancel.cancel()
    assert isinstance(events[-1], JobCancelled) and events[-1].partial_path.name == "stopped.partial.mp4"
    description = read_output_description(events[-1].partial_path)
    assert description.spec.settings["seed"] == 9 and description.spec.settings["seconds"] == 1.6
    assert json.loads(sidecar_path(events[-1].partial_path).read_text()) == _tag(events[-1].partial_path)
    assert description.fingerprint["memory_plan"] is None  # no planner: every component on the device


def test_join_segments_writes_the_metadata_it_is_given_and_none_otherwise(tmp_path):
    segment = tmp_path / "segment.mp4"
    encode_segment(np.zeros((3, 32, 32, 3), np.uint8), segment, fps=30, crf=16)
    join_segments([segment], tmp_path / "plain.mp4")
    join_segments([segment], tmp_path / "tagged.mp4", metadata={"comment": "é " * 5000})
    with av.open(str(tmp_path / "plain.mp4")) as plain, av.open(str(tmp_path / "tagged.mp4")) as tagged:
        assert "comment" not in plain.metadata
        assert tagged.metadata["comment"] == "é " * 5000


def test_the_description_survives_a_plain_ffmpeg_remux_which_is_why_it_is_the_comment_tag(made, tmp_path):
    remuxed = tmp_path / "trimmed.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(made["video"]), "-c", "copy", str(remuxed)], check=True,
                   timeout=60)
    assert not sidecar_path(remuxed).exists()
    assert read_output_description(remuxed) == read_output_description(made["video"])


# --- reading ---------------------------------------------------------------------------------------------------


def test_without_metadata_the_sidecar_is_read_and_without_either_the_video_is_refused(made, tmp_path):
    stripped = tmp_path / "stripped.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(made["video"]), "-map_metadata", "-1", "-c", "copy",
                    str(stripped)], check=True, timeout=60)
    with av.open(str(stripped)) as container:
        assert METADATA_TAG not in container.metadata
    with pytest.raises(InvalidInputError, match="carries no FramePack description") as refused:
        read_output_description(stripped)
    assert refused.value.field == "from" and "sidecar stripped.json" in str(refused.value)
    shutil.copy(sidecar_path(made["video"]), sidecar_path(stripped))
    assert read_output_description(stripped) == read_output_description(made["video"])


def test_another_tool_s_comment_is_not_taken_for_a_description(made, tmp_path):
    video = tmp_path / "commented.mp4"
    join_segments([made["video"]], video, metadata={"comment": "holiday 2024"})
    with pytest.raises(InvalidInputError, match="carries no FramePack description"):
        read_output_description(video)


def test_an_invalid_description_is_refused_naming_the_bad_field(made, tmp_path):
    data = _tag(made["video"])
    data["spec"]["settings"]["steps"] = 0
    video = _with_description(made["video"], tmp_path / "edited.mp4", data)
    with pytest.raises(InvalidInputError, match=r"edited.mp4's metadata is invalid: spec\.settings\.steps"):
        read_output_description(video)
    data["spec"]["settings"]["steps"] = 3
    data["version"] = 99
    _with_description(made["video"], video, data)
    with pytest.raises(InvalidInputError, match="version: must be 1, got 99"):
        read_output_description(video)


def test_an_output_description_round_trips_through_json(made):
    description = read_output_description(made["video"])
    assert OutputDescription.from_json(description.to_json()) == description
    assert json.loads(container_metadata(description)[METADATA_TAG]) == description.to_dict()


# --- generate --from -------------------------------------------------------------------------------------------


def test_from_reproduces_the_same_latents_and_frames_bit_for_bit(made, images, tiny_models_dir, tmp_path, capsys):
    video, latents = tmp_path / "again.mp4", tmp_path / "again.safetensors"
    code, out, err = _cli(capsys, "generate", "--from", made["video"], "--image", images["image"], "--models-dir",
                          tiny_models_dir, "--quiet", "--output", video, "--save-latents", latents)
    assert code == cli.EXIT_OK, err
    assert "note: settings from first.mp4 (seed 4242, 3 steps, 0.8 s, model original)" in err
    assert "override" not in err and "may not reproduce" not in err
    first, again = load_file(made["latents"]), load_file(latents)
    assert first.keys() == again.keys()
    for name in first:
        assert torch.equal(first[name], again[name]), name
    assert np.array_equal(read_video_frames(made["video"]), read_video_frames(video))
    assert read_output_description(video).spec == read_output_description(made["video"]).spec


def test_from_with_typed_options_overrides_them_and_says_so(made, images, tiny_models_dir, tmp_path, capsys):
    video = tmp_path / "changed.mp4"
    # --steps 3 equals the video's value but was typed: it still counts as given.
    code, _, err = _cli(capsys, "generate", "--from", made["video"], "--image", images["image"], "--models-dir",
                        tiny_models_dir, "--quiet", "--output", video, "--seed", "7", "--teacache", "--steps", "3")
    assert code == cli.EXIT_OK, err
    note = next(line for line in err.splitlines() if "override" in line)
    assert note == ("note: options that override the video's settings: --seed 7 instead of 4242, --steps 3 instead "
                    "of 3, --teacache instead of --no-teacache")
    settings = read_output_description(video).spec.settings
    assert settings["seed"] == 7 and settings["cache"] == "teacache"
    assert settings["prompt"] == "a remembered prompt" and settings["resolution"] == 64  # the rest: the video's


def test_from_refuses_a_different_image_with_exit_2_naming_image(made, images, tiny_models_dir, tmp_path, capsys):
    code, out, err = _cli(capsys, "generate", "--from", made["video"], "--image", images["other"], "--models-dir",
                          tiny_models_dir, "--output", tmp_path / "x.mp4")
    assert code == cli.EXIT_BAD_INPUT
    assert err.startswith("error: --image: ") and "is not the image first.mp4 was made from" in err
    assert "How to fix: Give --image the exact file the video was made from" in err
    assert not (tmp_path / "x.mp4").exists() and out == ""


@pytest.mark.parametrize("kind", ["text", "png", "plain mp4", "missing"])
def test_from_refuses_a_non_video_or_a_video_without_description_with_exit_2(kind, images, tiny_models_dir,
                                                                             tmp_path, capsys):
    names = {"text": "notes.mp4", "png": "picture.png", "plain mp4": "plain.mp4", "missing": "gone.mp4"}
    path = tmp_path / names[kind]
    if kind == "text":
        path.write_text("not a video\n")
    elif kind == "png":
        shutil.copy(images["image"], path)
    elif kind == "plain mp4":
        encode_segment(np.zeros((3, 32, 32, 3), np.uint8), path, fps=30, crf=16)
    code, out, err = _cli(capsys, "generate", "--from", path, "--image", images["image"], "--models-dir",
                          tiny_models_dir)
    assert code == cli.EXIT_BAD_INPUT and out == ""
    expected = {"text": "notes.mp4 is not a video file", "png": "picture.png is not a video file",
                "plain mp4": "plain.mp4 carries no FramePack description", "missing": "gone.mp4 does not exist"}
    assert err.startswith("error: --from: ") and expected[kind] in err and "How to fix: " in err
    assert "Traceback" not in err


def test_from_notes_when_this_machine_differs_from_the_one_that_made_the_video(made, images, tiny_models_dir,
                                                                               tmp_path, capsys):
    data = _tag(made["video"])
    data["fingerprint"]["versions"]["torch"] = "1.0.0"
    data["fingerprint"]["models"]["vae"] = "hunyuanvideo-community/HunyuanVideo/vae sha256:0000000000000000"
    elsewhere = _with_description(made["video"], tmp_path / "elsewhere.mp4", data)
    code, _, err = _cli(capsys, "generate", "--from", elsewhere, "--image", images["image"], "--models-dir",
                        tiny_models_dir, "--quiet", "--output", tmp_path / "here.mp4")
    assert code == cli.EXIT_OK, err
    note = next(line for line in err.splitlines() if "may not reproduce" in line)
    assert note.startswith("note: this machine differs from the one that made elsewhere.mp4, so the video may not "
                           "reproduce bit for bit: ")
    assert f"versions.torch: 1.0.0 -> {torch.__version__}" in note
    assert "models.vae: hunyuanvideo-community/HunyuanVideo/vae sha256:0000000000000000 -> " in note


# --- the UI's "Load settings from a video" ---------------------------------------------------------------------


def test_the_ui_loads_a_video_s_settings_into_the_form_and_refuses_other_files_readably(made, tmp_path):
    from app.ui.page import JOB_FIELDS, settings_to_inputs, video_settings

    defaults = {"fp8": None}
    values, note = video_settings(made["video"], defaults)
    loaded = dict(zip(JOB_FIELDS, values))
    assert loaded["prompt"] == "a remembered prompt" and loaded["seed"] == 4242 and loaded["steps"] == 3
    assert loaded["cache"] == "none" and loaded["model"] == "original" and loaded["fp8"] == "auto"
    assert values == settings_to_inputs(dict(read_output_description(made["video"]).spec.settings), defaults)
    assert "first.mp4" in note and read_output_description(made["video"]).spec.image_sha256[:12] in note

    not_a_video = tmp_path / "holiday.mp4"
    not_a_video.write_text("no")
    with pytest.raises(InvalidInputError, match="holiday.mp4 is not a video file") as refused:
        video_settings(not_a_video, defaults)
    assert refused.value.field == "video" and refused.value.hint
