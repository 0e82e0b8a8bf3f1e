"""Tiny-model end-to-end runs of the engine: mp4 frame counts, determinism, cancel, TeaCache, latents file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from framepack_core.events import CancelToken, JobCancelled, JobFailed, JobFinished, SectionFinished, StepProgress
from framepack_core.media.video_io import probe_video, read_video_frames
from framepack_core.models.devices import resolve_device_config
from framepack_core.models.loading import ModelSource
from framepack_core.models.store import ModelStore
from framepack_core.pipeline.engine import FramePackEngine
from framepack_core.request import GenerationRequest

# Window 3 keeps runs short: 0.8 s gives 2 sections, 4 * (2 * 3 + 1) - 3 = 25 frames.
FAST = dict(latent_window_size=3, steps=3, resolution=64, seconds=0.8, cache="none")


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> FramePackEngine:
    return FramePackEngine(ModelStore(ModelSource(models_dir=tiny_models_dir), resolve_device_config("cpu")))


@pytest.fixture(scope="module")
def input_image(gradient_image: Path) -> Path:
    return gradient_image


def _run(engine, request, cancel=None):
    events = list(engine.generate(request, cancel=cancel))
    return events, events[-1]


@pytest.mark.parametrize("model", ["original", "f1"])
def test_tiny_run_writes_an_mp4_with_the_expected_frames_and_size(engine, input_image, tmp_path, model):
    request = GenerationRequest(image=input_image, prompt="a cat walks", model=model, output=tmp_path / "out.mp4",
                                save_latents=tmp_path / "latents.safetensors", **FAST)
    events, last = _run(engine, request)
    assert isinstance(last, JobFinished), last
    info = probe_video(last.output_path)
    # A 300x420 (h x w) image at base resolution 64 lands in the 48x64 bucket.
    assert (info.frame_count, info.height, info.width) == (25, 48, 64)
    assert read_video_frames(last.output_path).shape == (25, 48, 64, 3)
    assert last.video_frames == 25
    sections = [e for e in events if isinstance(e, SectionFinished)]
    assert [s.section for s in sections] == [1, 2]
    steps = [e for e in events if isinstance(e, StepProgress)]
    assert len(steps) == 2 * 3 and steps[0].preview.dtype == np.uint8
    saved = load_file(str(tmp_path / "latents.safetensors"))
    assert saved["history_latents"].shape == (1, 16, 7, 6, 8) and saved["history_latents"].dtype == torch.float32
    assert saved["start_latent"].shape == (1, 16, 1, 6, 8)
    # Both models keep the user's image latent at the start of the video.
    assert torch.equal(saved["history_latents"][:, :, :1], saved["start_latent"])
    assert not list(tmp_path.glob(".*")), "temporary segment folders must be cleaned up"


def test_same_seed_gives_the_same_video_and_another_seed_does_not(engine, input_image, tmp_path):
    def latents(seed, name):
        request = GenerationRequest(image=input_image, prompt="waves", seed=seed, output=tmp_path / f"{name}.mp4",
                                    save_latents=tmp_path / f"{name}.safetensors", **FAST)
        assert isinstance(_run(engine, request)[1], JobFinished)
        return load_file(str(tmp_path / f"{name}.safetensors"))["history_latents"], tmp_path / f"{name}.mp4"

    a, video_a = latents(7, "a")
    b, video_b = latents(7, "b")
    c, _ = latents(8, "c")
    assert torch.equal(a, b)
    assert np.array_equal(read_video_frames(video_a), read_video_frames(video_b))
    assert video_a.read_bytes() == video_b.read_bytes()
    assert not torch.equal(a, c)


def test_cancel_within_a_step_keeps_a_playable_partial_video(engine, input_image, tmp_path):
    cancel = CancelToken()
    request = GenerationRequest(image=input_image, output=tmp_path / "cut.mp4", **{**FAST, "seconds": 1.6})
    steps_after_cancel = 0
    events = []
    for event in engine.generate(request, cancel=cancel):
        events.append(event)
        if cancel.cancelled and isinstance(event, StepProgress):
            steps_after_cancel += 1
        if isinstance(event, StepProgress) and event.section == 2 and event.step == 1:
            cancel.cancel()
    last = events[-1]
    assert isinstance(last, JobCancelled) and last.sections_done == 1
    assert steps_after_cancel == 0
    assert not (tmp_path / "cut.mp4").exists(), "a cancelled job must not pose as a finished video"
    info = probe_video(last.partial_path)
    assert info.frame_count == 4 * 3 - 3  # the first original section: one window, all of it still pending
    assert len(read_video_frames(last.partial_path)) == info.frame_count


def test_cancel_before_any_section_leaves_no_file(engine, input_image, tmp_path):
    cancel = CancelToken()
    cancel.cancel()
    events, last = _run(engine, GenerationRequest(image=input_image, output=tmp_path / "none.mp4", **FAST), cancel)
    assert isinstance(last, JobCancelled) and last.partial_path is None
    assert list(tmp_path.iterdir()) == []


def test_teacache_with_zero_skips_is_identical_to_no_cache(engine, input_image, tmp_path):
    def run(**extra):
        name = "_".join(f"{k}{v}" for k, v in extra.items()) or "plain"
        request = GenerationRequest(image=input_image, output=tmp_path / f"{name}.mp4",
                                    save_latents=tmp_path / f"{name}.safetensors", **{**FAST, "steps": 6, **extra})
        assert isinstance(_run(engine, request)[1], JobFinished)
        return load_file(str(tmp_path / f"{name}.safetensors"))["history_latents"]

    plain = run()
    # A threshold no step stays under computes every step through the hooks: identical to no cache.
    always = run(cache="teacache", cache_threshold=1e-12)
    assert torch.equal(plain, always)
    cached = run(cache="teacache", cache_threshold=5.0)
    assert not torch.equal(plain, cached) and torch.isfinite(cached).all()
    # The hooks are gone afterwards: a plain run is still bit-identical.
    assert torch.equal(plain, run())


def test_real_cfg_uses_the_negative_prompt(engine, input_image, tmp_path):
    def run(cfg, negative, name):
        request = GenerationRequest(image=input_image, prompt="a dog", negative_prompt=negative, cfg=cfg,
                                    cfg_rescale=0.5, output=tmp_path / f"{name}.mp4",
                                    save_latents=tmp_path / f"{name}.safetensors", **FAST)
        assert isinstance(_run(engine, request)[1], JobFinished)
        return load_file(str(tmp_path / f"{name}.safetensors"))["history_latents"]

    assert not torch.equal(run(3.0, "blurry", "n1"), run(3.0, "static", "n2"))
    # With CFG off the negative prompt is never encoded or used.
    assert torch.equal(run(1.0, "blurry", "n3"), run(1.0, "static", "n4"))


def test_missing_weights_fail_as_an_event_with_the_component_named(input_image, tmp_path):
    engine = FramePackEngine(ModelStore(ModelSource(models_dir=tmp_path / "nothing", offline=True),
                                        resolve_device_config("cpu")))
    events, last = _run(engine, GenerationRequest(image=input_image, output=tmp_path / "x.mp4", **FAST))
    assert isinstance(last, JobFailed)
    assert "nothing" in last.message and last.hint
    assert not (tmp_path / "x.mp4").exists()
