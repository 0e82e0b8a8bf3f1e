"""Extending a clip (docs/controls.md, "Extend a video"): which latents of the clip reach the transformer, the
new and joined outputs, the messages for clips that cannot be used, and that the source file is never touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from framepack_core.cli.main import main
from framepack_core.errors import InvalidInputError
from framepack_core.events import JobFinished
from framepack_core.jobs.queue import JobQueue
from framepack_core.jobs.spec import file_sha256
from framepack_core.media.buckets import resize_and_center_crop
from framepack_core.media.video_input import DEFAULT_CONTEXT_FRAMES, clip_frames, read_extend_clip, write_last_frame
from framepack_core.media.video_io import probe_video, read_video_frames
from framepack_core.models.components import ModelVariant
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

# Window 3, 0.8 s: 2 sections of 3 latents. A 96x72 clip lands in the 48x64 bucket at resolution 64.
FAST = {"latent_window_size": 3, "steps": 1, "resolution": 64, "seconds": 0.8, "cache": "none"}
CLIP_FRAMES = 80


def write_clip(path: Path, frames: int = CLIP_FRAMES, fps: int = 30, codec: str = "libx264",
               size: tuple[int, int] = (96, 72)) -> Path:
    """A clip whose frames all differ (a moving gradient), so a wrong frame shows in the latents."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.stack([(x * 4 + i * 3) % 256, (y * 5 + i * 7) % 256, (x + y + i * 11) % 256], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "source.mp4")


def _recorded_run(engine: FramePackEngine, request: GenerationRequest) -> tuple[list, list[dict]]:
    """Run ``request``, recording the keyword arguments of every transformer call."""
    calls: list[dict] = []

    def record(module, args, kwargs):
        calls.append({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

    handle = engine.models.transformer(ModelVariant(request.model)).register_forward_pre_hook(record, with_kwargs=True)
    try:
        events = list(engine.generate(request))
    finally:
        handle.remove()
    assert isinstance(events[-1], JobFinished), events[-1]
    return events, calls


def _vae_latents(engine: FramePackEngine, frames: np.ndarray) -> torch.Tensor:
    """The VAE's latents of (T, H, W, 3) uint8 frames cropped to the 48x64 bucket: what the engine should use."""
    cropped = np.stack([resize_and_center_crop(f, target_height=48, target_width=64) for f in frames])
    pixels = (torch.from_numpy(cropped).float() / 127.5 - 1).permute(3, 0, 1, 2)[None]
    vae = engine.models.vae()
    with torch.no_grad():
        return (vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor).float()


def _png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(path)


def _stat(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def test_f1_first_section_sees_the_clips_last_latents_as_its_1x_2x_4x_context(engine, clip, tmp_path):
    start = write_last_frame(clip, tmp_path)
    before = _stat(clip)
    request = GenerationRequest(image=start, model="f1", extend_video=clip, output=tmp_path / "new.mp4", **FAST)
    events, calls = _recorded_run(engine, request)

    frames = read_video_frames(clip)
    latents = _vae_latents(engine, frames[-DEFAULT_CONTEXT_FRAMES:])
    assert latents.shape[2] == 19  # 73 frames: the whole 1x/2x/4x context
    first = calls[0]
    assert torch.equal(first["latents_clean"][:, :, 1:], latents[:, :, -1:])
    assert torch.equal(first["latents_history_2x"], latents[:, :, -3:-1])
    assert torch.equal(first["latents_history_4x"], latents[:, :, -19:-3])
    # The anchor at t=0 is the start image: by default the clip's last frame, encoded as an image.
    assert torch.equal(first["latents_clean"][:, :, :1], _vae_latents(engine, frames[-1:]))
    # "new": only the generated part, 2 sections x 3 latents x 4 frames, none of the clip's.
    assert probe_video(events[-1].output_path).frame_count == events[-1].video_frames == 24
    assert _stat(clip) == before


def test_f1_without_a_clip_is_unchanged_by_the_extension_code(engine, tmp_path, gradient_image):
    request = GenerationRequest(image=gradient_image, model="f1", output=tmp_path / "plain.mp4", **FAST)
    _, calls = _recorded_run(engine, request)
    assert not calls[0]["latents_history_4x"].any()  # a new video's history is empty


def test_context_frames_limits_what_f1_sees_and_the_rest_stays_empty(engine, clip, tmp_path):
    start = write_last_frame(clip, tmp_path)
    request = GenerationRequest(image=start, model="f1", extend_video=clip, context_frames=10,
                                output=tmp_path / "short.mp4", **FAST)
    events, calls = _recorded_run(engine, request)
    latents = _vae_latents(engine, read_video_frames(clip)[-9:])  # 10 rounded down to 4k+1 = 9 frames, 3 latents
    first = calls[0]
    assert torch.equal(first["latents_clean"][:, :, 1:], latents[:, :, -1:])
    assert torch.equal(first["latents_history_2x"], latents[:, :, -3:-1])
    assert not first["latents_history_4x"].any()
    assert any("rounded down to 4k+1" in getattr(e, "message", "") for e in events)


def test_original_bridges_from_the_clips_last_frame_and_joined_output_holds_clip_then_new(engine, clip, tmp_path):
    start = write_last_frame(clip, tmp_path)
    before = _stat(clip)
    request = GenerationRequest(image=start, model="original", extend_video=clip, extend_output="joined",
                                output=tmp_path / "joined.mp4", **FAST)
    events, calls = _recorded_run(engine, request)
    frames = read_video_frames(clip)
    first = calls[0]
    # clean_latents_pre, the one frame before the new part, is the clip's last frame; nothing after it is known.
    assert torch.equal(first["latents_clean"][:, :, :1], _vae_latents(engine, frames[-1:]))
    assert not first["latents_clean"][:, :, 1:].any() and not first["latents_history_4x"].any()
    # The new part (4 * (2 * 3 + 1) - 3 = 25 frames) starts at the clip's last frame, so that frame is not repeated.
    output = events[-1].output_path
    assert probe_video(output).frame_count == events[-1].video_frames == CLIP_FRAMES - 1 + 25
    joined = read_video_frames(output)
    resized = np.stack([resize_and_center_crop(f, target_height=48, target_width=64) for f in frames[:10]])
    assert np.abs(joined[:10].astype(int) - resized.astype(int)).mean() < 6  # the clip, at the job's size
    assert json.loads(av.open(str(output)).metadata["comment"])["spec"]["inputs"]["extend_video"] == \
        file_sha256(clip)
    assert _stat(clip) == before


def test_f1_joined_output_has_the_clip_and_the_new_frames(engine, clip, tmp_path):
    start = write_last_frame(clip, tmp_path)
    request = GenerationRequest(image=start, model="f1", extend_video=clip, extend_output="joined",
                                output=tmp_path / "f1-joined.mp4", **FAST)
    events = list(engine.generate(request))
    assert isinstance(events[-1], JobFinished), events[-1]
    assert probe_video(events[-1].output_path).frame_count == events[-1].video_frames == CLIP_FRAMES + 24


@pytest.mark.parametrize(("name", "make", "field", "words"), [
    ("missing.mp4", None, "extend_video", "does not exist"),
    ("garbage.mp4", lambda p: p.write_bytes(os.urandom(4000)), "extend_video", "damaged or not a video"),
    ("truncated.mp4", lambda p: p.write_bytes(write_clip(p).read_bytes()[:1500]), "extend_video",
     "damaged or not a video"),
    ("codec.mp4", lambda p: p.write_bytes(write_clip(p).read_bytes().replace(b"avc1", b"zzzz")), "extend_video",
     "codec that cannot be decoded"),
    ("still.png", lambda p: _png(p), "extend_video", "still image"),
])
def test_unusable_clips_are_refused_naming_the_field_before_any_model_loads(tmp_path, gradient_image, name, make,
                                                                            field, words):
    path = tmp_path / name
    if make is not None:
        make(path)
    # Weights that do not exist: the refusal must come before anything loads.
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tmp_path / "none", offline=True),
                                        resolve_device_config("cpu")))
    request = GenerationRequest(image=gradient_image, model="f1", extend_video=path, **FAST)
    with pytest.raises(InvalidInputError) as error:
        next(engine.generate(request))
    assert error.value.field == field and words in error.value.message


def test_a_clip_shorter_than_the_context_frames_asked_for_is_refused(tmp_path, gradient_image):
    short = write_clip(tmp_path / "short.mp4", frames=12)
    with pytest.raises(InvalidInputError) as error:
        read_extend_clip(short, 40)
    assert error.value.field == "context_frames" and "12" in error.value.message
    # Without context_frames a short clip is used whole, with a note.
    assert read_extend_clip(short, None).context.shape[0] == 9
    assert "fewer than the 73" in read_extend_clip(short, None).notes[0]


@pytest.mark.parametrize(("suffix", "codec"), [(".webm", "libvpx-vp9"), (".mov", "libx264")])
def test_webm_and_mov_clips_decode_like_mp4(tmp_path, suffix, codec):
    frames = list(clip_frames(write_clip(tmp_path / f"c{suffix}", frames=20, codec=codec)))
    assert len(frames) == 20 and frames[0].shape == (72, 96, 3)


def test_other_frame_rates_are_resampled_to_30_fps(tmp_path):
    assert len(list(clip_frames(write_clip(tmp_path / "c15.mp4", frames=10, fps=15)))) == 20
    assert len(list(clip_frames(write_clip(tmp_path / "c60.mp4", frames=20, fps=60)))) == 10


def test_cli_extends_without_an_image_and_from_asks_for_the_clip_again(tiny_models_dir, clip, tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    common = ["--models-dir", str(tiny_models_dir), "--device", "cpu", "--quiet", "--window", "3", "--steps", "1",
              "--resolution", "64", "--seconds", "0.8", "--no-teacache"]
    assert main(["generate", "--extend", str(clip), "--model", "f1", "--extend-output", "joined",
                 "--output", str(out), *common]) == 0
    assert probe_video(out).frame_count == CLIP_FRAMES + 24

    # Loading the settings from the video needs the clip again, and the very same one.
    assert main(["generate", "--from", str(out), "--extend", str(clip), "--output", str(tmp_path / "again.mp4"),
                 "--models-dir", str(tiny_models_dir), "--device", "cpu", "--quiet"]) == 0
    assert read_video_frames(tmp_path / "again.mp4").shape == read_video_frames(out).shape
    other = write_clip(tmp_path / "other.mp4", frames=30)
    capsys.readouterr()
    for extra, words in (([], "--extend"), (["--extend", str(other)], "is not the clip")):
        assert main(["generate", "--from", str(out), "--image", str(write_last_frame(clip, tmp_path)), *extra,
                     "--models-dir", str(tiny_models_dir), "--device", "cpu", "--quiet"]) == 2
        assert words in capsys.readouterr().err


def test_cli_refuses_neither_image_nor_clip_and_a_broken_clip_at_submit(tmp_path, capsys):
    assert main(["generate", "--seconds", "1"]) == 2
    assert "--image: is required" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 50)
    assert main(["jobs", "--output-dir", str(tmp_path / "out"), "submit", "--extend", str(broken)]) == 2
    assert "--extend: " in capsys.readouterr().err


def test_jobs_submit_queues_the_clip_by_its_sha256(clip, tmp_path):
    out = tmp_path / "out"
    assert main(["jobs", "--output-dir", str(out), "submit", "--extend", str(clip), "--model", "f1",
                 "--context-frames", "33", "--extend-output", "joined"]) == 0
    job = JobQueue.for_output_dir(out).list()[0]
    assert job.spec.inputs["extend_video"] == file_sha256(clip)
    assert job.spec.settings["context_frames"] == 33 and job.spec.settings["extend_output"] == "joined"
    stored = job.request().extend_video
    assert stored != clip and file_sha256(stored) == file_sha256(clip)


def test_rest_accepts_the_clip_as_an_upload_without_an_image(tiny_models_dir, clip, tmp_path):
    from tests.test_http_api import make_client

    client, service = make_client(tiny_models_dir, tmp_path / "outputs", start=False)
    try:
        response = client.post("/jobs", files={"extend_video": ("mine.mp4", clip.read_bytes(), "video/mp4")},
                               data={"settings": json.dumps({**FAST, "model": "f1", "extend_output": "joined"})})
        assert response.status_code == 201, response.text
        job = service.store.get(response.json()["id"])
        assert job.spec.inputs["extend_video"] == file_sha256(clip)
        assert job.spec.image_sha256 == file_sha256(write_last_frame(clip, tmp_path))
        broken = client.post("/jobs", files={"extend_video": ("bad.mp4", b"garbage" * 100, "video/mp4")})
        assert broken.status_code == 422 and broken.json()["field"] == "extend_video"
        assert "bad.mp4" in broken.json()["error"]
        assert not list((tmp_path / "outputs" / ".queue" / "uploads").glob("*"))
    finally:
        service.stop()


def test_a_cancelled_f1_extension_resumes_bit_identical_and_joins_once(engine, clip, tmp_path):
    from safetensors.torch import load_file

    from framepack_core.events import CancelToken, JobCancelled, SectionFinished

    start = write_last_frame(clip, tmp_path)

    def request(name: str) -> GenerationRequest:
        return GenerationRequest(image=start, model="f1", extend_video=clip, extend_output="joined",
                                 output=tmp_path / f"{name}.mp4", save_latents=tmp_path / f"{name}.safetensors",
                                 **{**FAST, "seconds": 1.2})

    whole = list(engine.generate(request("whole")))[-1]
    cancel, events = CancelToken(), []
    for event in engine.generate(request("resumed"), cancel=cancel, job_dir=tmp_path / "job"):
        events.append(event)
        if isinstance(event, SectionFinished) and event.section == 1:
            cancel.cancel()
    assert isinstance(events[-1], JobCancelled) and events[-1].sections_done == 1
    resumed = list(engine.generate(request("resumed"), job_dir=tmp_path / "job"))[-1]
    assert isinstance(resumed, JobFinished), resumed
    assert torch.equal(load_file(str(tmp_path / "resumed.safetensors"))["history_latents"],
                       load_file(str(tmp_path / "whole.safetensors"))["history_latents"])
    assert resumed.video_frames == whole.video_frames == CLIP_FRAMES + 3 * 3 * 4
    assert np.array_equal(read_video_frames(resumed.output_path), read_video_frames(whole.output_path))
